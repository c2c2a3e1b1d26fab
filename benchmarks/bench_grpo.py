"""GRPO throughput (prompt groups/s, generated tokens/s) and peak memory of `roboalign align grpo`.

On the CPU it uses the tiny Qwen2.5-VL backbone; with CUDA it also builds a Qwen2.5-VL-3B-sized architecture
with random bf16 weights (no download) and runs the same GRPO steps on it.

    python benchmarks/bench_grpo.py --steps 4 --out benchmarks/results/grpo.json
"""

import argparse
import csv
import json
import os
import resource
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, Qwen2_5_VLConfig

from lerobot_roboalign.action_vocab import ActionVocabulary
from lerobot_roboalign.align.common import save_final
from lerobot_roboalign.align.config import ModelConfig, TrainingConfig
from lerobot_roboalign.align.data import AlignDataConfig, load_samples
from lerobot_roboalign.align.grpo import AlignGRPOConfig, GRPOSection, train
from lerobot_roboalign.fast import FastTokenizer
from lerobot_roboalign.synthetic import write_synthetic_dataset
from lerobot_roboalign.tiny_backbone import make_tiny_backbone

QWEN25_VL_3B_TEXT = dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                         num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]})
QWEN25_VL_3B_VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                           fullatt_block_indexes=[7, 15, 23, 31])


def aligned_checkpoint(backbone: Path, data: AlignDataConfig, out: Path, dtype: torch.dtype) -> Path:
    """Extend ``backbone`` with a FAST vocabulary fitted on the data and save it as an aligned checkpoint."""
    model = AutoModelForImageTextToText.from_pretrained(backbone, dtype=dtype)
    processor = AutoProcessor.from_pretrained(backbone)
    fast = FastTokenizer.fit(np.stack([s["actions"] for s in load_samples(data)]), vocab_size=256)
    vocabulary = ActionVocabulary.extend(model, processor.tokenizer, fast)
    out.mkdir(parents=True, exist_ok=True)
    return save_final(model, processor, vocabulary, out)


def qwen25_vl_3b(tiny: Path, out: Path) -> Path:
    """A Qwen2.5-VL-3B-sized model with random bf16 weights and the tiny backbone's processor."""
    tiny_config = Qwen2_5_VLConfig.from_pretrained(tiny)
    text = dict(QWEN25_VL_3B_TEXT, pad_token_id=tiny_config.text_config.pad_token_id,
                eos_token_id=tiny_config.text_config.eos_token_id)
    config = Qwen2_5_VLConfig(text_config=text, vision_config=QWEN25_VL_3B_VISION,
                              image_token_id=tiny_config.image_token_id, video_token_id=tiny_config.video_token_id,
                              vision_start_token_id=tiny_config.vision_start_token_id,
                              vision_end_token_id=tiny_config.vision_end_token_id)
    with torch.device("cuda"):
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16)
    model.generation_config = AutoModelForImageTextToText.from_pretrained(tiny).generation_config
    model.save_pretrained(out)
    AutoProcessor.from_pretrained(tiny).save_pretrained(out)
    return out


def run_grpo(model_dir: Path, data: AlignDataConfig, out: Path, steps: int, groups: int, max_len: int) -> dict:
    cfg = AlignGRPOConfig(
        dataset=data,
        model=ModelConfig(path=str(model_dir), freeze_vision=False),
        training=TrainingConfig(output_dir=out, learning_rate=1e-6, lr_scheduler_type="constant", warmup_ratio=0.0,
                                max_steps=steps, per_device_train_batch_size=5 * groups, logging_steps=1,
                                save_steps=10**6, resume=False),
        grpo=GRPOSection(max_completion_length=max_len),
    )
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    train(cfg)
    seconds = time.perf_counter() - start
    rows = [r for r in csv.DictReader((out / "metrics.csv").open()) if r.get("completions/mean_length")]
    tokens = sum(float(r["completions/mean_length"]) * 5 * groups for r in rows)
    step_time = sum(float(r["step_time"]) for r in rows)
    return {
        "steps": steps,
        "prompt_groups_per_s": steps * groups / step_time,
        "generated_tokens_per_s": tokens / step_time,
        "wall_s_including_load_and_save": seconds,
        "peak_cpu_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "peak_cuda_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--groups", type=int, default=2, help="prompts per step (each gets 5 completions)")
    parser.add_argument("--max-completion-length", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/grpo.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix="bench_grpo_"))
    root = work / "dataset"
    dataset = write_synthetic_dataset(root, num_episodes=2, episode_length=20)
    data = AlignDataConfig(repo_ids=[dataset.repo_id], roots=[str(root)], cameras=["front"], chunk_size=4,
                           num_samples=16)
    tiny = make_tiny_backbone(work / "tiny")
    results = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
               "torch_threads": torch.get_num_threads()}
    tiny_aligned = aligned_checkpoint(tiny, data, work / "tiny_aligned", torch.float32)
    results["tiny_qwen2_5_vl"] = run_grpo(tiny_aligned, data, work / "grpo_tiny", args.steps, args.groups,
                                          args.max_completion_length)
    if torch.cuda.is_available():
        big = aligned_checkpoint(qwen25_vl_3b(tiny, work / "qwen3b"), data, work / "qwen3b_aligned", torch.bfloat16)
        results["qwen2_5_vl_3b_random_bf16"] = run_grpo(big, data, work / "grpo_3b", args.steps, args.groups,
                                                        args.max_completion_length)
    else:
        results["qwen2_5_vl_3b_random_bf16"] = "not run: no CUDA device"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
