"""``roboalign align generate``: the aligned MLLM's test-time reasoning and decoded action chunk, readable.

Either a dataset frame (which also prints the recorded chunk and the error) or image files + an instruction:

    roboalign align generate --model_path=out/grpo/model --dataset.repo_ids='[me/so101]' \
        --dataset.roots='[data/so101]' --index=120
    roboalign align generate --model_path=out/grpo/model --images='[front.png]' --instruction="pick up the cube"
"""

import re

import numpy as np
from PIL import Image

from lerobot_roboalign.align import commands
from lerobot_roboalign.align.common import generate_completions
from lerobot_roboalign.align.config import GenerateConfig, ModelConfig
from lerobot_roboalign.align.data import align_messages, frame_sample, open_dataset
from lerobot_roboalign.align.grpo import load_aligned


def input_sample(cfg: GenerateConfig, fast) -> dict:
    """The sample to reason about: a dataset frame, or image files + instruction."""
    if cfg.dataset.repo_ids:
        root = cfg.dataset.roots[0] if cfg.dataset.roots else None
        return frame_sample(open_dataset(cfg.dataset.repo_ids[0], root, cfg.dataset, fast), cfg.index, cfg.dataset)
    if not cfg.images or not cfg.instruction:
        raise ValueError("Give a dataset frame (--dataset.repo_ids, --index) or --images='[a.png]' and --instruction=...")
    return {"task": cfg.instruction, "state": None, "images": [Image.open(p).convert("RGB") for p in cfg.images]}


def reasoning_of(text: str) -> str:
    match = re.search(r"<think>(.*?)</think>", text, re.DOTALL)
    return match.group(1).strip() if match else "(no <think> block)"


def run(cfg: GenerateConfig) -> dict:
    """Generate once; returns the completion text, reasoning, FAST tokens and decoded chunk (NaN if invalid)."""
    model, processor, vocabulary, fast = load_aligned(ModelConfig(path=cfg.model_path))
    model.eval()
    sample = input_sample(cfg, fast)
    [ids] = generate_completions(
        model, processor, [align_messages(sample["task"], sample["state"])], [sample["images"]],
        max_new_tokens=cfg.max_new_tokens, do_sample=cfg.do_sample,
    )
    tokens = vocabulary.parse_span(ids)
    chunk = fast.decode([tokens])[0][0] if tokens else np.full((fast.chunk_size, fast.action_dim), np.nan)
    return {
        "text": processor.tokenizer.decode(ids, skip_special_tokens=False),
        "reasoning": reasoning_of(processor.tokenizer.decode(ids, skip_special_tokens=False)),
        "fast_tokens": tokens,
        "actions": chunk,
        "recorded": sample.get("actions"),
    }


def show(cfg: GenerateConfig) -> dict:
    result = run(cfg)
    np.set_printoptions(precision=3, suppress=True, linewidth=120)
    print(f"reasoning: {result['reasoning']}")
    print(f"action tokens: {result['fast_tokens'] if result['fast_tokens'] is not None else '(no valid action span)'}")
    print(f"decoded action chunk [{result['actions'].shape[0]} x {result['actions'].shape[1]}]:\n{result['actions']}")
    if result["recorded"] is not None:
        error = np.abs(result["actions"] - result["recorded"]).mean()
        print(f"recorded chunk:\n{result['recorded']}\nmean |error|: {error:.4f}")
    return result


main = commands.main_generate  # parses before this module's imports (align/commands.py): --help stays fast
