"""``roboalign align reason``: zero-shot reasoning texts for alignment samples, stored as JSON lines.

The paper asks the MLLM itself, with no action supervision, how the arm should move: without such texts
SFT collapses the reasoning to one short phrase and GRPO has nothing diverse to work with. A tiny offline
backbone cannot reason, so the source is pluggable: ``scripted`` describes the recorded motion (or any
callable of the sample, e.g. simulator state) and every row says which source wrote it.

Rows are appended one batch at a time and flushed; a rerun skips the ids already written and drops a
trailing line cut off by a kill, so an interrupted run resumes without losing or duplicating work.

    roboalign align reason --dataset.repo_ids='[me/so101]' --dataset.roots='[data/so101]' \
        --model_path=Qwen/Qwen2.5-VL-7B-Instruct --output=reasoning.jsonl
"""

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import draccus
import numpy as np
from tqdm.auto import tqdm

from lerobot_roboalign.align.common import ModelConfig, generate_completions, load_model_and_processor
from lerobot_roboalign.align.data import AlignDataConfig, load_samples, reasoning_messages

logger = logging.getLogger(__name__)

SOURCES = ("mllm", "scripted")


class ReasoningSource(Protocol):
    """Turns alignment samples into reasoning texts; ``name`` labels every row it produces."""

    name: str

    def __call__(self, samples: list[dict]) -> list[str]: ...


class MLLMReasoning:
    """The paper's source: the MLLM answers a reasoning prompt about the sample's images and task."""

    def __init__(self, model_path: str, max_new_tokens: int = 256, dtype: str = "auto"):
        self.model, self.processor = load_model_and_processor(ModelConfig(path=model_path, dtype=dtype))
        self.model.eval()
        self.max_new_tokens = max_new_tokens
        self.name = f"mllm:{Path(model_path).name}"

    def __call__(self, samples: list[dict]) -> list[str]:
        completions = generate_completions(
            self.model,
            self.processor,
            [reasoning_messages(s["task"], s["state"]) for s in samples],
            [s["images"] for s in samples],
            max_new_tokens=self.max_new_tokens,
        )
        texts = self.processor.tokenizer.batch_decode(completions, skip_special_tokens=True)
        return [text.strip() for text in texts]


class ScriptedReasoning:
    """A stand-in where the backbone is too small to reason: any callable of the sample, labelled as scripted."""

    def __init__(self, describe: Callable[[dict], str], name: str = "scripted:motion"):
        self.describe = describe
        self.name = name

    def __call__(self, samples: list[dict]) -> list[str]:
        return [self.describe(sample) for sample in samples]


def describe_motion(sample: dict, top_k: int = 2, threshold: float = 1e-3) -> str:
    """Describe the recorded chunk's net motion: the joints that move most, their direction, and the gripper."""
    actions = np.asarray(sample["actions"])
    delta = actions[-1] - actions[0]
    names = sample.get("action_names") or [f"joint {i + 1}" for i in range(actions.shape[1])]
    order = [int(i) for i in np.argsort(-np.abs(delta[:-1]))[:top_k] if abs(delta[i]) > threshold]
    moves = [f"{names[i]} {'increases' if delta[i] > 0 else 'decreases'} by {abs(delta[i]):.2f}" for i in order]
    gripper = "opens" if delta[-1] > threshold else "closes" if delta[-1] < -threshold else "holds"
    body = ", ".join(moves) if moves else "the arm stays still"
    return f"To {sample['task'].rstrip('.')}, {body}, and the gripper {gripper}."


@dataclass
class ReasonConfig:
    dataset: AlignDataConfig = field(default_factory=AlignDataConfig)
    source: str = "mllm"  # mllm (the paper) | scripted (motion description, for tiny offline backbones)
    model_path: str = "Qwen/Qwen2.5-VL-7B-Instruct"
    output: Path = Path("outputs/reasoning.jsonl")
    batch_size: int = 8
    max_new_tokens: int = 256

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"--source={self.source!r} is not one of {SOURCES}.")


def make_source(cfg: ReasonConfig) -> ReasoningSource:
    if cfg.source == "mllm":
        return MLLMReasoning(cfg.model_path, cfg.max_new_tokens)
    return ScriptedReasoning(describe_motion)


def read_reasoning(path: Path) -> dict[str, dict]:
    """Rows by sample id; a last line without its newline (a run killed mid-write) is cut off the file."""
    if not path.exists():
        return {}
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) != len(data):
        logger.warning("Dropping a partial last line of %s (interrupted write).", path)
        with path.open("r+b") as file:
            file.truncate(len(complete))
    rows = (json.loads(line) for line in complete.decode().splitlines() if line.strip())
    return {row["id"]: row for row in rows}


def append_rows(path: Path, rows: list[dict]) -> None:
    with path.open("a") as file:
        file.write("".join(json.dumps(row) + "\n" for row in rows))
        file.flush()
        os.fsync(file.fileno())


def write_reasoning(samples: list[dict], source: ReasoningSource, output: Path, batch_size: int) -> dict[str, dict]:
    """Reason about every sample not yet in ``output``; returns all rows by id."""
    output.parent.mkdir(parents=True, exist_ok=True)
    done = read_reasoning(output)
    todo = [s for s in samples if s["id"] not in done]
    progress = tqdm(total=len(samples), initial=len(samples) - len(todo), desc=f"reasoning ({source.name})")
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        rows = [
            {"id": s["id"], "source": source.name, "task": s["task"], "reasoning": text}
            for s, text in zip(batch, source(batch), strict=True)
        ]
        append_rows(output, rows)
        done.update((row["id"], row) for row in rows)
        progress.update(len(batch))
    progress.close()
    return done


def main(argv: list[str] | None = None) -> Path:
    cfg = draccus.parse(config_class=ReasonConfig, args=argv or [])
    samples = load_samples(cfg.dataset)
    rows = write_reasoning(samples, make_source(cfg), cfg.output, cfg.batch_size)
    print(f"{len(rows)} reasoning rows in {cfg.output}")
    return cfg.output
