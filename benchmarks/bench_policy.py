"""select_action latency and training throughput: RoboAlign vs LeRobot's SmolVLA, same run.

Both policies get a tiny random backbone of about the same size (Qwen2.5-VL for RoboAlign,
SmolVLM for SmolVLA, both ~1.3M parameters, 4 layers), the same two 64x64 cameras, 6-D state
and action, chunk 16, and go through their own pre/post-processors exactly as lerobot-eval
calls them. Reports p50/p99 per control step and per chunk, samples/s, and the ratios.
Optional on CUDA: ``--full-size`` builds the Qwen2.5-VL-7B architecture with random bf16
weights and measures per-chunk latency and peak memory. The feature cache
(``--policy.cache_features``): RoboAlign's training steps/s on the same frames and batches with
a warm cache, on the epoch that fills it, and without; ``--feature-cache-only`` measures just
that and keeps the other results.

    python benchmarks/bench_policy.py [--steps 64] [--train-steps 10] [--full-size] [--feature-cache-only]
"""

import argparse
import json
import os
import re
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from lerobot.configs import FeatureType, PolicyFeature  # noqa: E402
from lerobot.datasets import LeRobotDataset  # noqa: E402
from lerobot.datasets.factory import resolve_delta_timestamps  # noqa: E402
from lerobot.policies.factory import get_policy_class, make_policy, make_pre_post_processors  # noqa: E402
from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig  # noqa: E402

import lerobot_policy_roboalign  # noqa: E402,F401
from lerobot_roboalign.configuration_roboalign import RoboAlignConfig  # noqa: E402
from lerobot_roboalign.runner import run_lerobot, train_args  # noqa: E402
from lerobot_roboalign.synthetic import write_synthetic_dataset  # noqa: E402
from lerobot_roboalign.tiny_backbone import make_tiny_backbone  # noqa: E402

RESULTS = Path(__file__).parent / "results"
CAMERAS = ("observation.images.front", "observation.images.wrist")
CHUNK = 16


def features() -> tuple[dict, dict]:
    inputs = {cam: PolicyFeature(FeatureType.VISUAL, (3, 64, 64)) for cam in CAMERAS}
    inputs["observation.state"] = PolicyFeature(FeatureType.STATE, (6,))
    return inputs, {"action": PolicyFeature(FeatureType.ACTION, (6,))}


def stats() -> dict:
    ones, zeros = torch.ones(6), torch.zeros(6)
    return {"observation.state": {"mean": zeros, "std": ones}, "action": {"mean": zeros, "std": ones}}


def observation(batch_size: int = 1) -> dict:
    obs = {cam: torch.rand(batch_size, 3, 64, 64) for cam in CAMERAS}
    obs["observation.state"] = torch.randn(batch_size, 6)
    obs["task"] = ["pick up the red cube"] * batch_size
    return obs


def build(config) -> tuple:
    policy = get_policy_class(config.type)(config)
    pre, post = make_pre_post_processors(config, dataset_stats=stats())
    return policy, pre, post


def latency(policy, pre, post, steps: int) -> dict:
    policy.eval()
    policy.reset()
    per_step = []
    for _ in range(steps):
        obs = observation()
        start = time.perf_counter()
        with torch.no_grad():
            post(policy.select_action(pre(obs)))
        per_step.append(time.perf_counter() - start)
    per_chunk = []
    for _ in range(max(4, steps // CHUNK)):
        batch = pre(observation())
        start = time.perf_counter()
        with torch.no_grad():
            policy.predict_action_chunk(batch)
        per_chunk.append(time.perf_counter() - start)
    ms = lambda xs, q: 1000 * float(np.percentile(xs, q))  # noqa: E731
    return {
        "step_p50_ms": ms(per_step, 50),
        "step_p99_ms": ms(per_step, 99),
        "chunk_p50_ms": ms(per_chunk, 50),
        "chunk_p99_ms": ms(per_chunk, 99),
    }


def train_throughput(policy, pre, steps: int, batch_size: int = 8) -> float:
    policy.train()
    optimizer = torch.optim.AdamW(policy.get_optim_params(), lr=1e-4)
    batch = observation(batch_size)
    batch["action"] = torch.randn(batch_size, CHUNK, 6)
    batch["action_is_pad"] = torch.zeros(batch_size, CHUNK, dtype=torch.bool)
    batch = pre(batch)
    policy.forward(batch)[0].backward()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        loss, _ = policy.forward(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return steps * batch_size / (time.perf_counter() - start)


ROBOALIGN_SIZES = dict(vlm_layer=4, head_hidden_size=128, head_num_layers=4, head_num_heads=4,
                       image_resolution=(224, 224), device="cpu")  # fmt: skip


def configs(workdir: Path) -> dict:
    inputs, outputs = features()
    roboalign = RoboAlignConfig(
        vlm_model_name=str(make_tiny_backbone(workdir / "qwen2_5_vl", "qwen2_5_vl")),
        **ROBOALIGN_SIZES,
        input_features=dict(inputs),
        output_features=dict(outputs),
    )
    smolvla = SmolVLAConfig(
        vlm_model_name=str(make_tiny_backbone(workdir / "smolvlm", "smolvlm")),
        load_vlm_weights=False,
        num_vlm_layers=4,
        chunk_size=CHUNK,
        n_action_steps=CHUNK,
        num_steps=10,
        device="cpu",
        input_features=dict(inputs),
        output_features=dict(outputs),
    )
    return {"roboalign": roboalign, "smolvla": smolvla}


def epoch_seconds(policy, batches: list[dict]) -> float:
    """One pass of AdamW steps over ``batches``, as lerobot-train's update_policy runs them."""
    optimizer = torch.optim.AdamW(policy.get_optim_params(), lr=1e-4)
    policy.train()
    start = time.perf_counter()
    for batch in batches:
        loss, _ = policy.forward(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def feature_cache_throughput(workdir: Path, epochs: int = 5, batch_size: int = 8) -> dict:
    """Training steps/s of RoboAlign (frozen backbone) without the cache, on the epoch that fills it, and warm.

    The same preprocessed batches of a 32-frame LeRobotDataset for every row, so only the backbone's cost differs;
    data loading (which the cache does not remove: the pixels are still loaded and checksummed) is left out. Warm
    and uncached epochs alternate and the median is kept, so load from other processes hits both alike.
    """
    load = os.getloadavg()[0]
    dataset = write_synthetic_dataset(workdir / "dataset", num_episodes=2, episode_length=16)
    backbone = str(make_tiny_backbone(workdir / "qwen2_5_vl", "qwen2_5_vl"))
    policies, batches = {}, []
    for name, cache in (("no_cache", None), ("cache", workdir / "feature_cache")):
        config = RoboAlignConfig(vlm_model_name=backbone, **ROBOALIGN_SIZES, cache_features=cache is not None,
                                 feature_cache_dir=str(cache) if cache else None)  # fmt: skip
        torch.manual_seed(0)
        policies[name] = make_policy(config, ds_meta=dataset.meta)
        if not batches:
            pre, _ = make_pre_post_processors(config, dataset_stats=dataset.meta.stats)
            chunks = LeRobotDataset(dataset.repo_id, root=dataset.root,
                                    delta_timestamps=resolve_delta_timestamps(config, dataset.meta))  # fmt: skip
            loader = torch.utils.data.DataLoader(chunks, batch_size=batch_size, shuffle=True,
                                                 generator=torch.Generator().manual_seed(0))  # fmt: skip
            batches = [pre(batch) for batch in loader]
    epoch_seconds(policies["no_cache"], batches[:1])  # warm-up of the uncached path (first-call allocations)
    fill = epoch_seconds(policies["cache"], batches)
    timings = {"no_cache": [], "cache": []}
    for _ in range(epochs):
        for name in timings:
            timings[name].append(epoch_seconds(policies[name], batches))
    steps_per_s = {name: len(batches) / statistics.median(seconds) for name, seconds in timings.items()}
    steps_per_s["cache_fill"] = len(batches) / fill
    on_disk = sum(p.stat().st_blocks * 512 for p in (workdir / "feature_cache").rglob("*.bin"))
    return {
        "lerobot_train": lerobot_train_throughput(workdir, backbone, batch_size),
        "frames": dataset.meta.total_frames,
        "batch_size": batch_size,
        "steps_per_epoch": len(batches),
        "epochs_timed": epochs,
        "steps_per_s": steps_per_s,
        "warm_over_no_cache": steps_per_s["cache"] / steps_per_s["no_cache"],
        "fill_over_no_cache": steps_per_s["cache_fill"] / steps_per_s["no_cache"],
        "cache_mib_on_disk": on_disk / 2**20,
        "load_average_before": load,
        "threads": torch.get_num_threads(),
    }


LOG_TIMES = re.compile(r"updt_s:([\d.]+) data_s:([\d.]+)")


def lerobot_train_throughput(workdir: Path, backbone: str, batch_size: int, epochs: int = 3) -> dict:
    """The same through ``lerobot-train`` on a video dataset (64 frames), data loading included: steps/s of the
    first epoch and of the later ones, from its per-epoch log lines (LeRobot's update and data-loading times)."""
    dataset = write_synthetic_dataset(workdir / "video_dataset", num_episodes=2, episode_length=32, video=True)
    steps_per_epoch = dataset.meta.total_frames // batch_size
    rows = {}
    for name, extra in (("no_cache", ()), ("cache", ("--policy.cache_features=true",
                                                    f"--policy.feature_cache_dir={workdir / 'train_cache'}"))):
        args = train_args(dataset.root, dataset.repo_id, backbone, workdir / f"train_{name}", epochs * steps_per_epoch,
                          batch_size, extra=(*extra, f"--log_freq={steps_per_epoch}", "--policy.vlm_layer=4",
                                             "--policy.head_hidden_size=128", "--policy.head_num_layers=4",
                                             "--policy.image_resolution=[224,224]"))  # fmt: skip
        times = [(float(update), float(data)) for update, data in LOG_TIMES.findall(run_lerobot("lerobot-train", args))]
        rows[name] = {
            "update_s": [update for update, _ in times],
            "data_s": [data for _, data in times],
            "first_epoch_steps_per_s": 1 / sum(times[0]),
            "later_steps_per_s": statistics.mean(1 / sum(t) for t in times[1:]),
        }
    rows["warm_over_no_cache"] = rows["cache"]["later_steps_per_s"] / rows["no_cache"]["later_steps_per_s"]
    return rows


QWEN25_VL_7B = dict(
    text_config=dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                     num_key_value_heads=4, vocab_size=152064,
                     rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]}),
    vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                       fullatt_block_indexes=[7, 15, 23, 31], window_size=112, patch_size=14, spatial_merge_size=2),
)


def full_size_cuda(workdir: Path) -> dict:
    """Qwen2.5-VL-7B architecture, random bf16 weights, cut at layer 18: per-chunk latency and memory.

    The tiny checkpoint lends its tokenizer, processor and chat template (and so its special
    token ids); only the weights' shapes matter for latency and memory.
    """
    from transformers import AutoConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tiny = make_tiny_backbone(workdir / "processor_source", "qwen2_5_vl")
    token_ids = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
    tiny_config = AutoConfig.from_pretrained(tiny)
    config = Qwen2_5_VLConfig(**QWEN25_VL_7B, **{k: getattr(tiny_config, k) for k in token_ids})
    full = workdir / "qwen2_5_vl_7b_random"
    Qwen2_5_VLForConditionalGeneration(config).to(torch.bfloat16).save_pretrained(full)
    for path in tiny.iterdir():
        if path.name.startswith(("tokenizer", "chat_template", "processor", "preprocessor")):
            (full / path.name).write_bytes(path.read_bytes())
    inputs, outputs = features()
    policy, pre, post = build(RoboAlignConfig(vlm_model_name=str(full), device="cuda",
                                              input_features=dict(inputs), output_features=dict(outputs)))
    policy.to("cuda")
    torch.cuda.reset_peak_memory_stats()
    result = latency(policy, pre, post, steps=64)
    result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return result


def plot(results: dict, path: Path) -> None:
    names = list(results)
    metrics = ["step_p50_ms", "step_p99_ms", "chunk_p50_ms", "chunk_p99_ms"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        axes[0].bar(np.arange(len(metrics)) + i * width, [results[name][m] for m in metrics], width, label=name)
        axes[1].bar(i, results[name]["train_samples_per_s"], label=name)
    axes[0].set_xticks(np.arange(len(metrics)) + width / 2, metrics, rotation=20)
    axes[0].set_ylabel("ms (CPU, lower is better)")
    axes[1].set_xticks(range(len(names)), names)
    axes[1].set_ylabel("training samples/s (higher is better)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def cache_markdown(cache: dict) -> list[str]:
    rate, train = cache["steps_per_s"], cache["lerobot_train"]
    return [
        "",
        f"Feature cache (`--policy.cache_features`, frozen tiny backbone, {cache['frames']} frames, batch "
        f"{cache['batch_size']}, median of {cache['epochs_timed']} alternating epochs, data loading excluded; "
        f"CPU, {cache['threads']} thread(s), load average {cache['load_average_before']:.1f} before the run):",
        "",
        "| training | steps/s | vs no cache |",
        "|---|---|---|",
        f"| no cache | {rate['no_cache']:.2f} | 1.00x |",
        f"| cache, first epoch (filling) | {rate['cache_fill']:.2f} | {cache['fill_over_no_cache']:.2f}x |",
        f"| cache, warm | {rate['cache']:.2f} | {cache['warm_over_no_cache']:.2f}x |",
        "",
        f"Cache on disk: {cache['cache_mib_on_disk']:.1f} MiB.",
        "",
        f"Through `lerobot-train` on a video dataset ({len(train['cache']['update_s'])} epochs of 64 frames, data "
        "loading included; its log's update + data-loading time per step):",
        "",
        "| lerobot-train | epoch 1 steps/s | later epochs steps/s | update s (later) | data s (later) |",
        "|---|---|---|---|---|",
        *[f"| {name.replace('_', ' ')} | {train[name]['first_epoch_steps_per_s']:.2f} | "
          f"{train[name]['later_steps_per_s']:.2f} | {statistics.mean(train[name]['update_s'][1:]):.3f} | "
          f"{statistics.mean(train[name]['data_s'][1:]):.3f} |" for name in ("no_cache", "cache")],
        f"| cache / no cache | | {train['warm_over_no_cache']:.2f}x | | |",
    ]


def update_feature_cache_only() -> None:
    """Measure the feature cache alone and add it to the existing results (the other rows are kept)."""
    report = json.loads((RESULTS / "policy.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        report["feature_cache"] = feature_cache_throughput(Path(tmp))
    (RESULTS / "policy.json").write_text(json.dumps(report, indent=2))
    table = (RESULTS / "policy.md").read_text().split("\n\nFeature cache")[0].rstrip("\n").splitlines()
    (RESULTS / "policy.md").write_text("\n".join(table + cache_markdown(report["feature_cache"])) + "\n")
    print("\n".join(cache_markdown(report["feature_cache"])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--train-steps", type=int, default=10)
    parser.add_argument("--full-size", action="store_true")
    parser.add_argument("--feature-cache-only", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.feature_cache_only:
        update_feature_cache_only()
        return
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, config in configs(Path(tmp)).items():
            policy, pre, post = build(config)
            results[name] = latency(policy, pre, post, args.steps)
            results[name]["train_samples_per_s"] = train_throughput(policy, pre, args.train_steps)
            results[name]["parameters"] = sum(p.numel() for p in policy.parameters())
    ratios = {
        key: results["roboalign"][key] / results["smolvla"][key]
        for key in ("step_p50_ms", "step_p99_ms", "chunk_p50_ms", "chunk_p99_ms", "train_samples_per_s")
    }
    report = {"device": "cpu", "threads": torch.get_num_threads(), "results": results, "roboalign_over_smolvla": ratios}
    with tempfile.TemporaryDirectory() as tmp:
        report["feature_cache"] = feature_cache_throughput(Path(tmp))
    if args.full_size and torch.cuda.is_available():
        with tempfile.TemporaryDirectory() as tmp:
            report["qwen2_5_vl_7b_cuda"] = full_size_cuda(Path(tmp))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "policy.json").write_text(json.dumps(report, indent=2))
    lines = ["| policy | params | step p50 ms | step p99 ms | chunk p50 ms | chunk p99 ms | train samples/s |",
             "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['parameters'] / 1e6:.2f}M | {r['step_p50_ms']:.2f} | {r['step_p99_ms']:.1f} | "
                     f"{r['chunk_p50_ms']:.1f} | {r['chunk_p99_ms']:.1f} | {r['train_samples_per_s']:.1f} |")
    lines.append("| roboalign / smolvla | | " + " | ".join(f"{ratios[k]:.2f}x" for k in ratios) + " |")
    lines += cache_markdown(report["feature_cache"])
    (RESULTS / "policy.md").write_text("\n".join(lines) + "\n")
    plot(results, RESULTS / "policy.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
