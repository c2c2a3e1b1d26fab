"""``roboalign align reason``: zero-shot reasoning texts for alignment samples, stored as JSON lines.

The paper asks the MLLM itself, with no action supervision, how the arm should move: without such texts
SFT collapses the reasoning to one short phrase and GRPO has nothing diverse to work with. A tiny offline
backbone cannot reason, so the source is pluggable: ``scripted`` describes the recorded motion (or any
callable of the sample, e.g. simulator state) and every row says which source wrote it.

Rows are appended one batch at a time and flushed; a rerun skips the ids already written and drops a
trailing line cut off by a kill, so an interrupted run resumes without losing or duplicating work.

The samples not yet written are split over the ranks of ``accelerate launch`` (one rank without it); each
appends to its own ``OUTPUT.rankK.jsonl`` and rank 0 merges them into OUTPUT in sample order, so any number of
ranks, and any number of interruptions, give the same file.
``--engine=vllm`` generates with vLLM (same prompts, greedy) instead of transformers.

    roboalign align reason --dataset.repo_ids='[me/so101]' --dataset.roots='[data/so101]' \
        --model_path=Qwen/Qwen2.5-VL-7B-Instruct --output=reasoning.jsonl
    accelerate launch --num_processes=8 -m lerobot_roboalign.cli align reason ... --engine=vllm
"""

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env
from tqdm.auto import tqdm

from lerobot_roboalign.align import commands
from lerobot_roboalign.align.common import generate_completions, load_model_and_processor
from lerobot_roboalign.align.config import ModelConfig, ReasonConfig
from lerobot_roboalign.align.data import AlignSamples, load_samples, reasoning_messages
from lerobot_roboalign.align.launch import check_launch
from lerobot_roboalign.backbone import check_reachable

logger = logging.getLogger(__name__)

WAIT_SECONDS = 5.0  # rank 0 polls for the other ranks' parts this often (no collective that could time out)


class ReasoningSource(Protocol):
    """Turns alignment samples into reasoning texts; ``name`` labels every row it produces."""

    name: str

    def __call__(self, samples: list[dict]) -> list[str]: ...


class MLLMReasoning:
    """The paper's source: the MLLM answers a reasoning prompt about the sample's images and task."""

    def __init__(self, model_path: str, max_new_tokens: int = 256, dtype: str = "auto"):
        self.model, self.processor = load_model_and_processor(ModelConfig(path=model_path, dtype=dtype), flag="--model_path")
        self.model.to(launch_state().device).eval()  # this rank's GPU under accelerate
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


def import_vllm():
    try:
        from vllm import LLM, SamplingParams
    except ImportError as error:
        raise ImportError(
            "--engine=vllm needs vLLM, which is not installed: pip install 'lerobot_policy_roboalign[vllm]' on a CUDA "
            "machine, or use --engine=hf (transformers generate)."
        ) from error
    return LLM, SamplingParams


class VLLMReasoning:
    """``MLLMReasoning`` on vLLM: the same prompts and greedy decoding, one engine per rank (as TRL colocates it)."""

    def __init__(self, model_path: str, max_new_tokens: int, max_images: int, gpu_memory_utilization: float):
        from transformers import AutoProcessor

        LLM, SamplingParams = import_vllm()
        check_reachable(model_path, "--model_path", what="Model")
        state = launch_state()
        self.processor = AutoProcessor.from_pretrained(model_path)
        self.llm = LLM(
            model=model_path,
            gpu_memory_utilization=gpu_memory_utilization,
            limit_mm_per_prompt={"image": max_images},
            distributed_executor_backend="external_launcher" if state.num_processes > 1 else None,
            seed=state.process_index,
        )
        self.sampling = SamplingParams(max_tokens=max_new_tokens, temperature=0.0)
        self.name = f"mllm:{Path(model_path).name}"

    def __call__(self, samples: list[dict]) -> list[str]:
        from trl.data_utils import prepare_multimodal_messages

        prompts = []
        for sample in samples:
            images = sample["images"]
            conversation = prepare_multimodal_messages(reasoning_messages(sample["task"], sample["state"]), images=images)
            text = self.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
            prompts.append({"prompt": text, "multi_modal_data": {"image": images}})
        outputs = self.llm.generate(prompts, self.sampling, use_tqdm=False)
        return [output.outputs[0].text.strip() for output in outputs]


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


def launch_state() -> PartialState:
    """This process's place in the launch: CPU ranks (ACCELERATE_USE_CPU, or no GPU) join over gloo."""
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available())


def make_source(cfg: ReasonConfig, max_images: int) -> ReasoningSource:
    if cfg.source == "scripted":
        return ScriptedReasoning(describe_motion)
    if cfg.engine == "vllm":
        return VLLMReasoning(cfg.model_path, cfg.max_new_tokens, max_images, cfg.vllm_gpu_memory_utilization)
    return MLLMReasoning(cfg.model_path, cfg.max_new_tokens)


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


def part_path(output: Path, rank: int) -> Path:
    return output.with_name(f"{output.name}.rank{rank}.jsonl")


def done_marker(output: Path, rank: int) -> Path:
    return output.with_name(f"{output.name}.rank{rank}.done")


def merge_parts(output: Path, ids: list[str]) -> None:
    """Fold rank parts into ``output``: rows of other ids first (as they were), then ``ids``' rows in that order.

    Written to a temporary file and renamed, then the parts removed: a kill leaves either the old or the merged
    file, and parts that a rerun merges again.
    """
    parts = sorted(output.parent.glob(f"{output.name}.rank*.jsonl"))
    rows = read_reasoning(output)  # also drops a line cut off by a kill
    if parts:
        for part in parts:
            rows.update(read_reasoning(part))
        ordered = set(ids)
        lines = [row for key, row in rows.items() if key not in ordered] + [rows[key] for key in ids if key in rows]
        merging = output.with_name(output.name + ".merging")
        merging.unlink(missing_ok=True)
        append_rows(merging, lines)
        os.replace(merging, output)
    for path in [*parts, *output.parent.glob(f"{output.name}.rank*.done")]:
        path.unlink()


def wait_for_parts(output: Path, ranks: int) -> None:
    """Rank 0 waits for every rank's done marker by polling: ranks may finish hours apart, past any barrier timeout."""
    progress = tqdm(total=ranks, desc="ranks done")
    while (finished := sum(done_marker(output, rank).exists() for rank in range(ranks))) < ranks:
        progress.update(finished - progress.n)
        time.sleep(WAIT_SECONDS)
    progress.update(finished - progress.n)
    progress.close()


def reason_sharded(samples: AlignSamples, make: Callable[[], ReasoningSource], output: Path, batch_size: int) -> None:
    """Write reasoning for every sample into ``output``, the missing ones split over this launch's ranks."""
    state = launch_state()
    output.parent.mkdir(parents=True, exist_ok=True)
    ids = [sample["id"] for sample in samples]
    if state.is_main_process:
        merge_parts(output, ids)  # the parts (and stale markers) of an interrupted sharded run
    state.wait_for_everyone()
    source = make()
    done = set(read_reasoning(output))
    todo = [index for index, key in enumerate(ids) if key not in done]
    with state.split_between_processes(todo) as mine:
        write_reasoning(samples.select(mine), source, part_path(output, state.process_index), batch_size)
    done_marker(output, state.process_index).touch()
    if state.is_main_process:
        wait_for_parts(output, state.num_processes)
        merge_parts(output, ids)


def run(cfg: ReasonConfig) -> Path:
    check_launch()
    samples = load_samples(cfg.dataset)
    max_images = max(len(source.cameras) for source in samples.sources)
    reason_sharded(samples, lambda: make_source(cfg, max_images), cfg.output, cfg.batch_size)
    if launch_state().is_main_process:
        print(f"{len(read_reasoning(cfg.output))} reasoning rows in {cfg.output}")
    return cfg.output


main = commands.main_reason  # parses before this module's imports (align/commands.py): --help stays fast
