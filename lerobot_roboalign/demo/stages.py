"""The pipeline's stages, each a public command a user runs at scale, and `Stages`, which runs them resumably.

Every stage function takes its inputs explicitly (dataset roots, seeds, sizes, output paths, extra command-line
arguments), so `roboalign demo` and `roboalign study` call the same functions with their own settings.
"""

import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..cli import main as roboalign
from ..runner import TINY_VLM_LAYER, run_lerobot, train_args
from .config import (
    ALIGN_STATE_NAMES,
    ALIGN_WITH_STATE,
    BASELINE_FRAMES,
    FAST_SCALE,
    FREEZE_VISION,
    GRPO_LR,
    REPO_ID,
    SFT_LR,
    TASKS,
    VLA_LR,
)
from .statistics import paired_on_decoded

logger = logging.getLogger(__name__)

BLIND_ROWS = ("most frequent FAST sequence per task (blind)", "mean chunk per task (blind)")


def fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def remove(paths: Iterable[Path]) -> None:
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


class Stages:
    """Runs named stages once per settings: a finished stage leaves ``<output_dir>/stages/<name>.json``.

    Each stage's fingerprint hashes its own settings and its inputs' fingerprints. A finished stage
    with the same fingerprint is reused; one with another (``--quick`` results under a full run) is
    redone. A stage that was started (``<name>.started``) with the same fingerprint and killed keeps
    its outputs so it can resume from them; outputs of unknown or other settings are deleted first.
    ``label`` names the command in the progress lines (``roboalign demo``, ``roboalign study``).
    """

    def __init__(self, output_dir: Path, parallel: int = 1, label: str = "roboalign demo"):
        self.directory = Path(output_dir) / "stages"
        self.label = label
        # Threads may call run() at once: at most ``parallel`` stages work at a time (a reused one takes no slot).
        self.slots = threading.BoundedSemaphore(max(1, parallel))
        self.directory.mkdir(parents=True, exist_ok=True)
        self.order: list[str] = []
        self.fingerprints: dict[str, str] = {}

    def run(
        self, name: str, work: Callable[[], dict], settings: dict, after: tuple[str, ...] = (), outputs: tuple = ()
    ) -> dict:
        key = fingerprint(name, settings, [self.fingerprints[stage] for stage in after])
        self.fingerprints[name] = key
        self.order.append(name)
        marker, started = self.directory / f"{name}.json", self.directory / f"{name}.started"
        if marker.is_file():
            record = json.loads(marker.read_text())
            if record.get("fingerprint") == key:
                logger.info("%s: stage %s already complete with these settings, reused", self.label, name)
                return record["result"]
            print(f"{self.label}: stage {name} was made with other settings: redoing it", flush=True)
            marker.unlink()
        if not (started.is_file() and started.read_text() == key):
            remove(outputs)  # never resume from another configuration's partial outputs
        with self.slots:
            started.write_text(key)
            print(f"\n=== {self.label}: {name} ===", flush=True)
            start = time.perf_counter()
            result = work()
        record = {"result": result, "wall_s": time.perf_counter() - start, "fingerprint": key, "settings": settings}
        tmp = marker.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=2, default=str))
        os.replace(tmp, marker)
        started.unlink()
        return result

    def wall_times(self) -> dict[str, float]:
        """Seconds per stage in pipeline order (as measured when each stage actually ran)."""
        return {name: json.loads((self.directory / f"{name}.json").read_text())["wall_s"] for name in self.order}


@dataclass(frozen=True)
class AlignData:
    """The recording alignment reads and how its frames are shown to the MLLM: one value for the tokenizer,
    reasoning, SFT, GRPO, scoring and probes, so they all read the same episodes the same way."""

    root: Path
    repo_id: str = REPO_ID
    chunk_size: int = 16
    holdout_every: int = 5  # every k-th episode is held out of alignment and scored on
    seed: int = 0
    include_state: bool = ALIGN_WITH_STATE
    state_names: tuple[str, ...] = ALIGN_STATE_NAMES  # written only with include_state

    def args(self, split: str = "all") -> list[str]:
        """``--dataset.*`` arguments of ``roboalign align`` for one split."""
        names = [f"--dataset.state_names=[{','.join(self.state_names)}]"] if self.include_state else []
        return [
            f"--dataset.repo_ids=[{self.repo_id}]",
            f"--dataset.roots=[{self.root}]",
            f"--dataset.chunk_size={self.chunk_size}",
            f"--dataset.seed={self.seed}",
            f"--dataset.holdout_every={self.holdout_every}",
            f"--dataset.split={split}",
            f"--dataset.include_state={self.include_state}",
            *names,
        ]

    def config(self, **fields):
        """The same data as an ``AlignDataConfig`` (``fields`` override), for the stages that load samples here."""
        from ..align.data import AlignDataConfig

        values = {
            "repo_ids": [self.repo_id], "roots": [str(self.root)], "chunk_size": self.chunk_size, "seed": self.seed,
            "holdout_every": self.holdout_every, "include_state": self.include_state,
            "state_names": list(self.state_names) if self.include_state else [],
        }  # fmt: skip
        return AlignDataConfig(**{**values, **fields})


def record_demos(
    root: Path, episodes: dict[str, int], seed: int, image_size: int, workers: int = 1, repo_id: str = REPO_ID,
    **options,
) -> dict:
    """Scripted simulator episodes into a LeRobotDataset (``sim record``); ``options`` go to
    ``record_scripted_demos`` as they are (for example the alignment corpus's variation)."""
    from ..sim_demos import record_scripted_demos

    return record_scripted_demos(
        root, repo_id, tasks=tuple(episodes), episodes_per_task=episodes, seed=seed,
        image_hw=(image_size, image_size), workers=workers, **options,
    )  # fmt: skip


def make_backbone(output: Path, seed: int) -> dict:
    """The tiny random Qwen2.5-VL the demo stands a pretrained MLLM with."""
    from ..tiny_backbone import make_tiny_backbone

    return {"path": str(make_tiny_backbone(output, "qwen2_5_vl", seed=seed))}


def fit_tokenizer(data: AlignData, output: Path, scale: float = FAST_SCALE, vocab_size: int = 256) -> dict:
    """``roboalign tokenizer fit`` on every episode of ``data``."""
    roboalign([
        "tokenizer", "fit",
        f"--dataset.repo_ids=[{data.repo_id}]",
        f"--dataset.roots=[{data.root}]",
        f"--chunk_size={data.chunk_size}",
        f"--vocab_size={vocab_size}",
        f"--scale={scale}",
        f"--output_dir={output}",
    ])  # fmt: skip
    return {"path": str(output)}


def write_reasoning(data: AlignData, output: Path) -> dict:
    """``roboalign align reason`` from the simulator's motion (the tiny backbone cannot reason)."""
    roboalign(["align", "reason", *data.args(), "--source=scripted", f"--output={output}"])
    return {"path": str(output), "source": "scripted (simulator motion; the tiny backbone cannot reason)"}


def training_args(output_dir: Path, steps: int, batch_size: int, seed: int) -> list[str]:
    return [
        f"--training.output_dir={output_dir}",
        f"--training.max_steps={steps}",
        f"--training.per_device_train_batch_size={batch_size}",
        f"--training.logging_steps={max(1, steps // 15)}",
        f"--training.save_steps={max(1, steps // 2)}",
        f"--training.seed={seed}",
    ]


def align_sft(
    data: AlignData, backbone: str, fast: str, reasoning: str, output: Path, steps: int, seed: int,
    lr: float = SFT_LR, batch_size: int = 8, freeze_vision: bool = FREEZE_VISION, extra_args: tuple[str, ...] = (),
) -> dict:
    """``roboalign align sft`` on the training split; ``extra_args`` are appended (``--vqa.path=...``, ...)."""
    roboalign([
        "align", "sft", *data.args("train"),
        f"--model.path={backbone}",
        f"--model.fast_tokenizer={fast}",
        f"--reasoning={reasoning}",
        f"--model.freeze_vision={freeze_vision}",
        f"--training.learning_rate={lr}",
        *training_args(output, steps, batch_size, seed),
        *extra_args,
    ])  # fmt: skip
    return {"path": str(output / "model"), "metrics": str(output / "metrics.csv")}


def align_grpo(
    data: AlignData, sft_model: str, reasoning: str, output: Path, steps: int, samples: int, generations: int,
    seed: int, lr: float = GRPO_LR, extra_args: tuple[str, ...] = (),
) -> dict:
    """``roboalign align grpo`` on ``samples`` training frames, its completion cap sized from the longest target."""
    roboalign([
        "align", "grpo", *data.args("train"),
        f"--dataset.num_samples={samples}",
        f"--model.path={sft_model}",
        f"--reasoning={reasoning}",
        f"--grpo.num_generations={generations}",
        "--grpo.max_completion_length=0",  # sized from the longest target completion
        f"--training.learning_rate={lr}",
        *training_args(output, steps, generations * 2, seed),
        *extra_args,
    ])  # fmt: skip
    cap = json.loads((output / "completion_cap.json").read_text())
    return {"path": str(output / "model"), "metrics": str(output / "metrics.csv"), **cap}


def score_alignment(
    data: AlignData, backbones: dict[str, str], fast_dir: str, reasoning_path: str, frames: int,
    baseline_frames: int = BASELINE_FRAMES,
) -> dict:
    """Each aligned backbone and the blind baselines on ``frames`` frames of held-out episodes, the same frames for
    all; paired comparisons against the blind baselines and of the second backbone against the first."""
    from transformers import AutoTokenizer

    from ..action_vocab import ActionVocabulary
    from ..align.data import load_samples, longest_target_tokens
    from ..align.grpo import COMPLETION_MARGIN
    from ..align.reason import read_reasoning
    from ..align.score import blind_baselines, paired_bootstrap, score_backbone
    from ..fast import FastTokenizer

    fast = FastTokenizer.from_pretrained(fast_dir)  # the one the backbones were aligned with
    heldout = load_samples(data.config(split="heldout", num_samples=frames, seed=data.seed + 1), fast)
    train = load_samples(data.config(split="train", num_samples=baseline_frames), fast)
    first = next(iter(backbones.values()))
    reasoning = {key: row["reasoning"] for key, row in read_reasoning(Path(reasoning_path)).items()}
    longest = longest_target_tokens(
        heldout + train, reasoning, AutoTokenizer.from_pretrained(first), ActionVocabulary.from_pretrained(first)
    )
    cap = longest + COMPLETION_MARGIN
    models = {name: score_backbone(path, heldout, cap) for name, path in backbones.items()}
    first_action, *others = (m["per_frame_action"] for m in models.values())
    baselines = blind_baselines(train, heldout, fast)
    mode, mean = (baselines[name] for name in BLIND_ROWS)
    versus_blind = {
        name: {  # positive = the model is better than the blind baseline, paired over the same frames
            "action": paired_bootstrap(mode["per_frame_action"], m["per_frame_action"], seed=data.seed),
            "l1_all": paired_bootstrap(m["per_frame_l1_all"], mean["per_frame_l1_all"], seed=data.seed),
            "l1_decoded": paired_on_decoded(m["per_frame_l1"], mean["per_frame_l1"], data.seed),
        }
        for name, m in models.items()
    }
    return {
        "cap": cap,
        "longest_target": longest,
        "n_frames": len(heldout),
        "heldout_episodes": sorted({s["episode_index"] for s in heldout}),
        "train_episodes": sorted({s["episode_index"] for s in train}),
        "models": models,
        "baselines": baselines,
        "versus_blind": versus_blind,
        # e.g. GRPO minus SFT, with the backbones given in that order
        "grpo_minus_sft_action": paired_bootstrap(first_action, others[0], seed=data.seed) if others else None,
    }


def probe_actions(data: AlignData, backbones: dict[str, str], frames: int, image_size: int) -> dict:
    """Linear probes of every backbone's image tokens for the action chunk (fitted on ``data``'s training
    episodes, scored on its held-out ones), as the VLA reads them: its prompt, the whole state beside."""
    from ..probe import probe_backbones

    config = data.config(include_state=False, state_names=[], image_size=image_size, num_samples=frames)
    return probe_backbones(backbones, config)


def probe_cube(
    backbones: dict[str, str], image_size: int, train_sizes: tuple[int, ...], n_test: int, seed: int,
    layer: int = TINY_VLM_LAYER,
) -> dict:
    """Linear probes of every backbone's image tokens for the cube's position, on fresh first frames."""
    from ..probe import probe_cube_position

    return probe_cube_position(backbones, layer, image_size, train_sizes, n_test, seed=seed)


@dataclass(frozen=True)
class VlaHead:
    """How a VLA's flow-matching head is trained on a frozen backbone (the same for every row compared)."""

    steps: int
    batch_size: int
    chunk_size: int
    n_action_steps: int
    hidden_size: int
    layers: int
    save_every: int  # lerobot-train checkpoints: a killed run resumes from the last one
    lr: float = VLA_LR
    extra_args: tuple[str, ...] = field(default=())  # more lerobot-train flags, e.g. --policy.cache_features=true

    def policy_args(self) -> tuple[str, ...]:
        return (
            f"--policy.chunk_size={self.chunk_size}",
            f"--policy.n_action_steps={self.n_action_steps}",
            f"--policy.scheduler_warmup_steps={max(1, self.steps // 20)}",
            f"--policy.scheduler_decay_steps={self.steps}",
            f"--policy.optimizer_lr={self.lr}",
            f"--policy.head_hidden_size={self.hidden_size}",
            f"--policy.head_num_layers={self.layers}",
            *self.extra_args,
        )


def vla_checkpoint(output: Path, head: VlaHead, step: int) -> Path:
    """The ``pretrained_model`` directory lerobot-train saved at ``step`` under ``output``."""
    from lerobot.common.train_utils import get_step_checkpoint_dir

    return get_step_checkpoint_dir(output, head.steps, step) / "pretrained_model"


def train_vla(
    dataset_root: Path, backbone: str, output: Path, head: VlaHead, seed: int, repo_id: str = REPO_ID,
    label: str = "lerobot-train",
) -> dict:
    """lerobot-train of a head on ``backbone``, streamed; resumes from its last checkpoint when a previous run
    was killed. Returns the last checkpoint and the logged losses."""
    last_config = output / "checkpoints" / "last" / "pretrained_model" / "train_config.json"
    if last_config.is_file():
        args = [f"--config_path={last_config}", "--resume=true"]
        print(f"demo: resuming lerobot-train from {last_config.parent}", flush=True)
    else:
        remove([output])  # killed before its first checkpoint: start again
        args = train_args(
            dataset_root, repo_id, backbone, output, head.steps, head.batch_size, seed, head.policy_args(),
            save_freq=min(head.save_every, head.steps),
        )  # fmt: skip
    log = run_lerobot("lerobot-train", args, stream=True, label=label)
    with (output / "lerobot-train.log").open("a") as file:
        file.write(log)
    return {"checkpoint": str(output / "checkpoints" / "last" / "pretrained_model"), "loss": train_losses(log)}


_LOSS_RE = re.compile(r"step:\s*(\S+).*?\bloss:\s*([0-9.eE+-]+)")


def train_losses(log: str) -> list[float]:
    """The loss of each of lerobot-train's periodic log lines."""
    return [float(match.group(2)) for match in _LOSS_RE.finditer(log)]


def count_successes(eval_info: dict, start_seed: int) -> dict[str, dict]:
    """Per task: episodes, successes, each episode's outcome and its reset seed, in seed order, from
    lerobot-eval's records (``--seed=start_seed`` resets each task's episode i with ``start_seed + i``)."""
    counts: dict[str, dict] = {}
    for entry in eval_info["per_task"]:
        successes = [bool(s) for s in entry["metrics"]["successes"]]
        task = counts.setdefault(entry["task_group"], {"n_episodes": 0, "successes": 0, "episodes": []})
        task["n_episodes"] += len(successes)
        task["successes"] += sum(successes)
        task["episodes"] += successes
    for task in counts.values():
        task["seeds"] = list(range(start_seed, start_seed + task["n_episodes"]))
    return counts


def by_seed(task_counts: dict) -> dict[int, bool]:
    """One task's outcomes keyed by episode seed (what pairs two policies' episodes)."""
    return dict(zip(task_counts["seeds"], task_counts["episodes"], strict=True))


def eval_vla(
    checkpoint: str, output: Path, episodes: int, seed: int, image_size: int, tasks: tuple[str, ...] = TASKS,
    camera_off: bool = False, label: str = "lerobot-eval",
) -> dict:
    """lerobot-eval of ``episodes`` episodes per task from reset seed ``seed``; ``camera_off``: the same episodes
    with a grey camera frame (a control). Returns ``count_successes``'s per-task outcomes, with their seeds."""
    remove([output])  # an evaluation killed midway restarts: its episodes are cheap and seeded
    log = run_lerobot("lerobot-eval", [
        f"--policy.path={checkpoint}",
        "--env.type=so101_lang",
        f"--env.task={','.join(tasks)}",
        f"--env.observation_height={image_size}",
        f"--env.observation_width={image_size}",
        f"--eval.n_episodes={episodes}",
        f"--eval.batch_size={min(2, episodes)}",
        "--eval.use_async_envs=false",
        f"--seed={seed}",
        f"--output_dir={output}",
        f"--env.camera_off={str(camera_off).lower()}",
    ], stream=True, label=label)  # fmt: skip
    (output / "lerobot-eval.log").write_text(log)
    return count_successes(json.loads((output / "eval_info.json").read_text()), seed)


def eval_expert(episodes: int, seed: int, tasks: tuple[str, ...] = TASKS) -> dict:
    """The scripted expert on lerobot-eval's seeds, counted as ``eval_vla`` counts a policy."""
    from ..sim_demos import evaluate_scripted_expert

    results = evaluate_scripted_expert(tasks, episodes, start_seed=seed)
    return {
        task: {"n_episodes": r["n_episodes"], "successes": sum(r["successes"]), "episodes": r["successes"],
               "seeds": r["seeds"]}
        for task, r in results.items()
    }  # fmt: skip
