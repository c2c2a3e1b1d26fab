"""Per-chunk time of RoboAlign's inference path: pre-processing, backbone, head; tiny and ~0.5B backbones.

Pre-processing is measured two ways in the same run: the cached path (instruction tokenised
once, images patchified on their device by the image processor) against the full Hugging Face
processor call every chunk (what the backbone did before: CPU copies + re-tokenising), which is
the peer. Random weights (no hub here): the tiny Qwen2.5-VL of the tests, and a Qwen2.5-VL with
Qwen2.5-0.5B's text model (896 wide, 24 layers, 151,936-token vocabulary) and a 12-layer, 768-wide
vision tower (~0.6B parameters), cut at the middle layer as the paper does.

    python benchmarks/bench_inference_path.py [--repeats=5]

Writes benchmarks/results/inference_path.{json,md,png}.
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


def mid_size(tiny_dir: Path):
    """A ~0.5B Qwen2.5-VL (random weights) sharing the tiny checkpoint's processor."""
    from transformers import AutoProcessor, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    config = Qwen2_5_VLConfig.from_pretrained(tiny_dir)
    text = config.text_config
    text.update(dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                     num_key_value_heads=2, vocab_size=151_936))  # fmt: skip
    text.rope_parameters = {**text.rope_parameters, "mrope_section": [8, 12, 12]}  # head_dim 64
    text.layer_types = ["full_attention"] * text.num_hidden_layers
    config.vision_config.update(dict(depth=12, hidden_size=768, intermediate_size=3072, num_heads=12,
                                     out_hidden_size=896, fullatt_block_indexes=[3, 7, 11]))  # fmt: skip
    model = Qwen2_5_VLForConditionalGeneration(config)
    return model, AutoProcessor.from_pretrained(tiny_dir)


def build_policy(tiny_dir: Path, size: str):
    from lerobot.configs import FeatureType, PolicyFeature

    from lerobot_roboalign.configuration_roboalign import RoboAlignConfig
    from lerobot_roboalign.modeling_roboalign import RoboAlignPolicy

    layer = 2 if size == "tiny" else 12
    config = RoboAlignConfig(
        vlm_model_name=str(tiny_dir), vlm_layer=layer, device="cpu", image_resolution=(224, 224),
        input_features={**{f"observation.images.{c}": PolicyFeature(FeatureType.VISUAL, (3, 480, 640))
                           for c in ("front", "wrist")},
                        "observation.state": PolicyFeature(FeatureType.STATE, (6,))},
        output_features={"action": PolicyFeature(FeatureType.ACTION, (6,))},
    )  # fmt: skip
    if size == "tiny":
        return RoboAlignPolicy(config).eval()
    with patch("lerobot_roboalign.backbone.load_vlm", lambda name, dtype: mid_size(tiny_dir)):
        return RoboAlignPolicy(config).eval()


def time_chunk(policy, repeats: int) -> dict:
    """Median ms per chunk of each stage, on 640x480 camera frames (resized to 224x224 inside)."""
    images = [torch.rand(1, 3, 480, 640) for _ in range(2)]
    state = torch.randn(1, 6)
    backbone, head = policy.backbone, policy.head
    stages: dict[str, list[float]] = {"preprocess_cached": [], "preprocess_uncached": [], "backbone": [], "head": []}
    with torch.no_grad():
        backbone.prepare(images, TASK)  # warm-up, caches the instruction
        for _ in range(repeats):
            t0 = time.perf_counter()
            inputs = backbone.prepare(images, TASK)
            t1 = time.perf_counter()
            features, mask = backbone.encode(inputs)
            t2 = time.perf_counter()
            head.sample(features.float(), mask, state)
            t3 = time.perf_counter()
            backbone._token_cache.clear()  # the peer: the full processor call, every chunk
            backbone.prepare(images, TASK)
            t4 = time.perf_counter()
            for name, value in zip(stages, (t1 - t0, t4 - t3, t2 - t1, t3 - t2)):
                value_ms = value * 1e3
                stages[name].append(value_ms)
    result = {name: float(np.median(values)) for name, values in stages.items()}
    result["parameters_m"] = sum(p.numel() for p in policy.parameters()) / 1e6
    result["total_ms"] = result["preprocess_cached"] + result["backbone"] + result["head"]
    return result


def report(results: dict, load: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {"load_average_before": load, "cpu_count": os.cpu_count(), "threads": torch.get_num_threads()}
    (RESULTS / "inference_path.json").write_text(json.dumps({**results, "_meta": meta}, indent=2))
    rows = ["| backbone | parameters | pre-processing (cached) | pre-processing (full processor, peer) | ratio | "
            "backbone | head | chunk total |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, r in results.items():
        rows.append(f"| {name} | {r['parameters_m']:.0f} M | {r['preprocess_cached']:.1f} ms | "
                    f"{r['preprocess_uncached']:.1f} ms | {r['preprocess_uncached'] / r['preprocess_cached']:.2f}x | "
                    f"{r['backbone']:.1f} ms | {r['head']:.1f} ms | {r['total_ms']:.1f} ms |")  # fmt: skip
    rows.append(f"\nCPU, median of repeats, batch 1, two 640x480 cameras resized to 224x224, float32. "
                f"Load average before the run: {load} ({os.cpu_count()} cores).")
    (RESULTS / "inference_path.md").write_text("# RoboAlign inference path per chunk\n\n" + "\n".join(rows) + "\n")
    fig, ax = plt.subplots(figsize=(7, 3.5))
    left = np.zeros(len(results))
    for stage in ("preprocess_cached", "backbone", "head"):
        values = np.array([r[stage] for r in results.values()])
        ax.barh(list(results), values, left=left, label=stage)
        left += values
    ax.set(xlabel="ms per chunk (CPU)", xscale="log", title="RoboAlign inference path per chunk")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "inference_path.png", dpi=110)
    print("\n".join(rows))


def main() -> None:
    from lerobot_roboalign.tiny_backbone import make_tiny_backbone

    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--repeats", type=int, default=5)
    opts = args.parse_args()
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "?"
    with tempfile.TemporaryDirectory() as tmp:
        tiny = make_tiny_backbone(Path(tmp) / "tiny", "qwen2_5_vl")
        results = {}
        for size in ("tiny", "qwen2.5-vl ~0.5B"):
            print(f"[bench_inference_path] {size}", flush=True)
            results[size] = time_chunk(build_policy(tiny, "tiny" if size == "tiny" else "mid"), opts.repeats)
    report(results, load)


if __name__ == "__main__":
    main()
