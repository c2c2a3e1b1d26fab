"""Per-chunk time of RoboAlign's inference path: pre-processing, backbone, head; tiny and ~0.5B backbones.

Pre-processing is measured two ways in the same run: the cached path (instruction tokenised
once, images patchified on their device by the image processor) against the full Hugging Face
processor call every chunk (what the backbone did before: CPU copies + re-tokenising), which is
the peer. Random weights (no hub here): the tiny Qwen2.5-VL of the tests, and a Qwen2.5-VL with
Qwen2.5-0.5B's text model (896 wide, 24 layers, 151,936-token vocabulary) and a 12-layer, 768-wide
vision tower (~0.6B parameters), cut at the middle layer as the paper does. On a GPU
(``--device=cuda``) the backbone runs in bfloat16 as a frozen backbone does there, and the
Qwen2.5-VL-7B architecture (cut at layer 18, the paper's) is measured too.

    python benchmarks/bench_inference_path.py [--repeats=5] [--device=cuda]

Writes benchmarks/results/inference_path{,_cuda}.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from unittest.mock import patch

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TASK = ["pick up the red cube and place it in the bowl"]


# Random-weight Qwen2.5-VL sizes: (text, vision, mrope_section, layer read by the head).
SIZES = {
    "qwen2.5-vl ~0.5B": (
        dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
             num_key_value_heads=2, vocab_size=151_936),
        dict(depth=12, hidden_size=768, intermediate_size=3072, num_heads=12, out_hidden_size=896,
             fullatt_block_indexes=[3, 7, 11]),
        [8, 12, 12], 12,
    ),
    "qwen2.5-vl-7b": (
        dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
             num_key_value_heads=4, vocab_size=152_064),
        dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
             fullatt_block_indexes=[7, 15, 23, 31]),
        [16, 24, 24], 18,
    ),
}  # fmt: skip


def random_qwen25_vl(tiny_dir: Path, size: str, device: str):
    """A Qwen2.5-VL of ``size`` (random weights, built on ``device``) with the tiny checkpoint's processor."""
    from transformers import AutoProcessor, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    text_dims, vision_dims, mrope_section, _ = SIZES[size]
    config = Qwen2_5_VLConfig.from_pretrained(tiny_dir)
    text = config.text_config
    text.update(text_dims)
    text.rope_parameters = {**text.rope_parameters, "mrope_section": mrope_section}
    text.layer_types = ["full_attention"] * text.num_hidden_layers
    config.vision_config.update(vision_dims)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration(config)
    return model, AutoProcessor.from_pretrained(tiny_dir)


def build_policy(tiny_dir: Path, size: str, device: str):
    from lerobot.configs import FeatureType, PolicyFeature

    from lerobot_roboalign.configuration_roboalign import RoboAlignConfig
    from lerobot_roboalign.modeling_roboalign import RoboAlignPolicy

    layer = 2 if size == "tiny" else SIZES[size][3]
    config = RoboAlignConfig(
        vlm_model_name=str(tiny_dir), vlm_layer=layer, device=device, image_resolution=(224, 224),
        input_features={**{f"observation.images.{c}": PolicyFeature(FeatureType.VISUAL, (3, 480, 640))
                           for c in ("front", "wrist")},
                        "observation.state": PolicyFeature(FeatureType.STATE, (6,))},
        output_features={"action": PolicyFeature(FeatureType.ACTION, (6,))},
    )  # fmt: skip
    if size == "tiny":
        return RoboAlignPolicy(config).to(device).eval()
    def random_model(name: str, dtype: torch.dtype):
        return random_qwen25_vl(tiny_dir, size, device)

    with patch("lerobot_roboalign.backbone.load_vlm", random_model):
        return RoboAlignPolicy(config).to(device).eval()


def clock(device: str) -> float:
    """Wall time once the device's queued work is done (CUDA runs asynchronously)."""
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def time_chunk(policy, repeats: int, device: str) -> dict:
    """Median ms per chunk of each stage, two 640x480 camera frames on ``device`` (resized to 224x224)."""
    images = [torch.rand(1, 3, 480, 640, device=device) for _ in range(2)]
    state = torch.randn(1, 6, device=device)
    backbone, head = policy.backbone, policy.head
    stages: dict[str, list[float]] = {name: [] for name in ("preprocess_cached", "preprocess_uncached",
                                                            "backbone", "head")}
    with torch.no_grad():
        # warm-up, caches the instruction
        features, mask, image_tokens = backbone.encode(backbone.prepare(images, TASK))
        head.sample(policy.standardize_image_tokens(features.float(), image_tokens), mask, state)
        for _ in range(repeats):
            t0 = clock(device)
            inputs = backbone.prepare(images, TASK)
            t1 = clock(device)
            features, mask, image_tokens = backbone.encode(inputs)
            t2 = clock(device)
            head.sample(policy.standardize_image_tokens(features.float(), image_tokens), mask, state)
            t3 = clock(device)
            backbone._token_cache.clear()  # the peer: the full processor call, every chunk
            backbone.prepare(images, TASK)
            t4 = clock(device)
            for name, value in zip(stages, (t1 - t0, t4 - t3, t2 - t1, t3 - t2)):
                value_ms = value * 1e3
                stages[name].append(value_ms)
    result = {name: float(np.median(values)) for name, values in stages.items()}
    result["parameters_m"] = sum(p.numel() for p in policy.parameters()) / 1e6
    result["backbone_dtype"] = str(next(backbone.parameters()).dtype)
    if device == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    result["total_ms"] = result["preprocess_cached"] + result["backbone"] + result["head"]
    return result


def describe(device: str, load: str) -> str:
    if device == "cuda":
        return (f"{torch.cuda.get_device_name()}, backbone in bfloat16 (a frozen backbone's dtype on CUDA), "
                f"head float32; median of repeats, batch 1, two 640x480 cameras resized to 224x224.")
    return (f"CPU, median of repeats, batch 1, two 640x480 cameras resized to 224x224, float32. "
            f"Load average before the run: {load} ({os.cpu_count()} cores).")


def report(results: dict, load: str, device: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "inference_path" + ("_cuda" if device == "cuda" else "")
    meta = {"load_average_before": load, "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
            "device": describe(device, load)}
    (RESULTS / f"{stem}.json").write_text(json.dumps({**results, "_meta": meta}, indent=2))
    rows = ["| backbone | parameters | pre-processing (cached) | pre-processing (full processor, peer) "
            "| ratio | backbone | head | chunk total |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, r in results.items():
        ratio = r["preprocess_uncached"] / r["preprocess_cached"]
        rows.append(f"| {name} | {r['parameters_m']:.0f} M | {r['preprocess_cached']:.1f} ms | "
                    f"{r['preprocess_uncached']:.1f} ms | {ratio:.2f}x | "
                    f"{r['backbone']:.1f} ms | {r['head']:.1f} ms | {r['total_ms']:.1f} ms |")  # fmt: skip
    rows.append("\n" + describe(device, load))
    (RESULTS / f"{stem}.md").write_text("# RoboAlign inference path per chunk\n\n" + "\n".join(rows) + "\n")
    fig, ax = plt.subplots(figsize=(7, 3.5))
    left = np.zeros(len(results))
    for stage in ("preprocess_cached", "backbone", "head"):
        values = np.array([r[stage] for r in results.values()])
        ax.barh(list(results), values, left=left, label=stage)
        left += values
    ax.set(xlabel=f"ms per chunk ({device})", xscale="log", title="RoboAlign inference path per chunk")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / f"{stem}.png", dpi=110)
    print("\n".join(rows))


def main() -> None:
    from lerobot_roboalign.tiny_backbone import make_tiny_backbone

    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--repeats", type=int, default=5)
    args.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    opts = args.parse_args()
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "?"
    sizes = ["tiny", "qwen2.5-vl ~0.5B"] + (["qwen2.5-vl-7b"] if opts.device == "cuda" else [])
    with tempfile.TemporaryDirectory() as tmp:
        tiny = make_tiny_backbone(Path(tmp) / "tiny", "qwen2_5_vl")
        results = {}
        for size in sizes:
            print(f"[bench_inference_path] {size} on {opts.device}", flush=True)
            if opts.device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            policy = build_policy(tiny, size, opts.device)
            results[size] = time_chunk(policy, opts.repeats, opts.device)
            del policy
    report(results, load, opts.device)


if __name__ == "__main__":
    main()
