"""VQA data in LLaVA's conversation format, mixed into SFT (the paper: 1.88M VQA to 400K action samples).

The file, LLaVA's JSON list or JSON lines (``.jsonl``, one record per line), is streamed a record at a time, never
parsed whole: once to count the records, once to write the drawn ones' conversations and image paths to an Arrow
table in datasets' cache, which every rank then memory-maps. No image is opened here: the training data loader
opens a row's images when it reads the row (``open_images``), so memory does not grow with the number of rows.
"""

import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from datasets import Dataset, Features, List, Value
from PIL import Image

from lerobot_roboalign.align.config import VQAConfig

ROLES = {"human": "user", "gpt": "assistant"}
CHUNK_CHARS = 1 << 20  # characters of the JSON list read at a time
SEPARATORS = re.compile(r"[\s,]*")
TURNS = List({"role": Value("string"), "content": Value("string")})
# The SFT rows' references (data.sft_dataset): an action sample's index and reasoning, or (sample -1) a VQA row.
ROW_FEATURES = Features({"sample": Value("int64"), "reasoning": Value("string"), "vqa_prompt": TURNS,
                         "vqa_completion": TURNS, "image_paths": List(Value("string"))})


def llava_turns(record: dict) -> tuple[list[dict], list[dict]]:
    """A LLaVA record as prompt (all turns but the last answer) and completion (the last answer)."""
    turns = [{"role": ROLES[t["from"]], "content": t["value"].replace("<image>", "").strip()} for t in record["conversations"]]
    if turns[-1]["role"] != "assistant":
        raise ValueError(f"VQA record {record.get('id')} does not end with a 'gpt' answer; fix or drop it.")
    return turns[:-1], turns[-1:]


def image_paths(record: dict, image_root: Path) -> list[str]:
    paths = record.get("image") or []
    return [str(image_root / p) for p in ([paths] if isinstance(paths, str) else paths)]


def iter_records(path: Path) -> Iterator[dict]:
    """The records of a JSONL file or a JSON list, one at a time (the list parsed incrementally, not loaded whole)."""
    with Path(path).open() as file:
        if Path(path).suffix == ".jsonl":
            yield from (json.loads(line) for line in file if line.strip())
            return
        yield from iter_json_list(file, path)


def iter_json_list(file, path: Path) -> Iterator[dict]:
    decoder = json.JSONDecoder()
    buffer = file.read(CHUNK_CHARS).lstrip()
    if not buffer.startswith("["):
        raise ValueError(f"{path} is not a JSON list of LLaVA records (nor a .jsonl file of them, one per line).")
    position = 1
    while True:
        position = SEPARATORS.match(buffer, position).end()
        if buffer.startswith("]", position):
            return
        try:
            record, position = decoder.raw_decode(buffer, position)
        except json.JSONDecodeError:  # the record runs past the buffer: read on
            more = file.read(CHUNK_CHARS)
            if not more:
                raise ValueError(f"{path} ends inside a record or without its closing ']': a truncated JSON list?")
            buffer, position = buffer[position:] + more, 0
            continue
        yield record


def converted_records(path: str, image_root: str, wanted: np.ndarray, version: tuple) -> Iterator[dict]:
    """The ``wanted`` records of ``path`` as SFT row references, in file order (``version`` keys datasets' cache)."""
    for index, record in enumerate(iter_records(Path(path))):
        if wanted[index]:
            prompt, completion = llava_turns(record)
            yield {"sample": -1, "reasoning": "", "vqa_prompt": prompt, "vqa_completion": completion,
                   "image_paths": image_paths(record, Path(image_root))}


def check_images(table: Dataset, path: Path) -> None:
    """A missing image is an error now, not mid-training (the paths are read in batches from the mapped table)."""
    missing, first = 0, None
    for batch in table.select_columns(["image_paths"]).iter(batch_size=10_000):
        for paths in batch["image_paths"]:
            for image in paths:
                if not Path(image).is_file():
                    missing, first = missing + 1, first or image
    if missing:
        raise FileNotFoundError(
            f"{missing} VQA images of {path} do not exist (first: {first}). Fix: set --vqa.image_root to the folder "
            "the file's image paths are relative to."
        )


def vqa_references(cfg: VQAConfig, count: int | None, seed: int) -> Dataset:
    """``count`` LLaVA conversations (drawn without replacement, cycling if the file is smaller; None: every record
    once, shuffled) as SFT row references (``ROW_FEATURES``), memory-mapped from datasets' cache; each drawn record
    is converted once."""
    if cfg.path is None or count == 0:
        return Dataset.from_dict({name: [] for name in ROW_FEATURES}, features=ROW_FEATURES)
    path = Path(cfg.path)
    total = sum(1 for _ in iter_records(path))
    if total == 0:
        raise ValueError(f"{path} holds no VQA records; drop --vqa.path or give a file with some.")
    count = total if count is None else count
    chosen = np.random.default_rng(seed).permutation(total)[np.arange(count) % total]
    wanted = np.zeros(total, dtype=bool)
    wanted[chosen] = True
    stat = path.stat()
    table = Dataset.from_generator(converted_records, features=ROW_FEATURES, gen_kwargs=dict(
        path=str(path.resolve()), image_root=str(cfg.image_root or path.parent), wanted=wanted,
        version=(stat.st_size, stat.st_mtime_ns)))
    check_images(table, path)
    return table.select(np.cumsum(wanted)[chosen] - 1)  # each drawn record's row in the table, in drawing order


def open_images(paths: list[str]) -> list[Image.Image]:
    return [Image.open(path).convert("RGB") for path in paths]
