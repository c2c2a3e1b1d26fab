"""VQA data in LLaVA's JSON conversation format, mixed into SFT (the paper: 1.88M VQA to 400K action samples).

The JSON is read once for the conversations and image paths; no image is opened here. Images are opened by the
training data loader when a row is read (``open_images``), so memory does not grow with the number of rows.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

ROLES = {"human": "user", "gpt": "assistant"}


@dataclass
class VQAConfig:
    """Extra VQA data: a LLaVA-style JSON list of {"image": path(s), "conversations": [{"from", "value"}]}."""

    path: Path | None = None
    image_root: Path | None = None  # image paths in the JSON are relative to this (default: the JSON's folder)
    ratio: float = 0.0  # VQA samples per action sample


def llava_turns(record: dict) -> tuple[list[dict], list[dict]]:
    """A LLaVA record as prompt (all turns but the last answer) and completion (the last answer)."""
    turns = [{"role": ROLES[t["from"]], "content": t["value"].replace("<image>", "").strip()} for t in record["conversations"]]
    if turns[-1]["role"] != "assistant":
        raise ValueError(f"VQA record {record.get('id')} does not end with a 'gpt' answer; fix or drop it.")
    return turns[:-1], turns[-1:]


def image_paths(record: dict, image_root: Path) -> list[str]:
    paths = record.get("image") or []
    return [str(image_root / p) for p in ([paths] if isinstance(paths, str) else paths)]


def vqa_references(cfg: VQAConfig, count: int, seed: int) -> dict[str, list]:
    """Columns of ``count`` LLaVA conversations (drawn without replacement, cycling if the file is smaller):
    ``vqa_prompt``, ``vqa_completion`` and ``image_paths``. A missing image is an error now, not mid-training."""
    columns: dict[str, list] = {"vqa_prompt": [], "vqa_completion": [], "image_paths": []}
    if cfg.path is None or count == 0:
        return columns
    records = json.loads(Path(cfg.path).read_text())
    image_root = Path(cfg.image_root or Path(cfg.path).parent)
    order = np.random.default_rng(seed).permutation(len(records))
    chosen = [int(order[i % len(records)]) for i in range(count)]
    for index in dict.fromkeys(chosen):  # each record converted (and checked) once
        records[index] = (*llava_turns(records[index]), image_paths(records[index], image_root))
    missing = [p for index in dict.fromkeys(chosen) for p in records[index][2] if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} VQA images of {cfg.path} do not exist (first: {missing[0]}). Fix: set --vqa.image_root to "
            "the folder the JSON's image paths are relative to."
        )
    for index in chosen:
        prompt, completion, paths = records[index]
        columns["vqa_prompt"].append(prompt)
        columns["vqa_completion"].append(completion)
        columns["image_paths"].append(paths)
    return columns


def open_images(paths: list[str]) -> list[Image.Image]:
    return [Image.open(path).convert("RGB") for path in paths]
