"""`roboalign demo`: the whole RoboAlign pipeline offline, on a simulated SO-101, in minutes.

It calls the public commands a user runs at scale (``roboalign tokenizer fit``,
``roboalign align reason|sft|grpo``, ``lerobot-train``, ``lerobot-eval``); only the data source
(scripted simulator demonstrations) and the tiny random backbone are demo-specific. The paper's
"RoboAlign without RL" vs "RoboAlign" rows are reproduced in miniature: two VLAs that differ only
in their backbone (after SFT, after SFT + GRPO), evaluated closed loop on held-out seeds, next to
the scripted expert, beside a VLA on the unaligned base backbone. Alignment trains on some episodes
and is scored on frames of the others, with a completion cap sized from the data, next to blind
baselines. Every stage records its wall time and a fingerprint of its settings: a finished stage is
reused only with the same settings, and an interrupted one resumes (recording chunks, TRL and
lerobot-train checkpoints) or restarts cleanly (evaluation).
"""

import csv
import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from itertools import combinations
from pathlib import Path

import draccus

from ..cli import main as roboalign
from ..runner import TINY_VLM_LAYER, run_lerobot, train_args
from .statistics import paired_counts, paired_on_decoded, wilson_interval

logger = logging.getLogger(__name__)

TASKS = ("reach_and_close", "pick_and_place")
REPO_ID = "local/so101_scripted"
CUBE_PROBE_SEED_OFFSET = 10_000  # the cube probe's first frames: past the evaluation's seeds, before recording's


@dataclass
class DemoSizes:
    """How much of everything; the defaults took 18.7-24.1 minutes on 2 CPU cores (docs/demo/report.md)."""

    # reach_and_close episodes are ~9 frames and depend on the cube's position alone: a head needs many positions
    # (and a fair share of the frames) to learn to find the cube in the image; pick_and_place's are ~48 frames.
    reach_episodes: int = 300
    pick_episodes: int = 30
    image_size: int = 96
    chunk_size: int = 16
    n_action_steps: int = 8
    sft_steps: int = 1400
    grpo_steps: int = 64
    grpo_generations: int = 4
    grpo_samples: int = 64
    score_samples: int = 128  # frames of held-out episodes scored (greedy, one completion each)
    vla_steps: int = 4500
    vla_batch_size: int = 8
    vla_head_hidden_size: int = 128  # two tasks in one head: 64x2 (the tests' size) underfits them
    vla_head_layers: int = 4
    eval_episodes_per_task: int = 20
    holdout_every: int = 5  # every 5th recorded episode is held out of alignment and scored on
    vla_save_every: int = 1500  # lerobot-train checkpoints: a killed VLA stage resumes from the last one
    # Evaluate every checkpoint, not only the last (success against training steps): one more lerobot-eval per
    # checkpoint and row, which the full run's 25 minutes do not hold.
    eval_every_checkpoint: bool = False
    probe_frames: int = 800  # frames the action-chunk probes draw from the whole recording
    cube_probe_frames: int = 300  # most first frames the cube-position probe fits on (fewer: the recording's count)
    cube_probe_test: int = 100  # first frames it is scored on


QUICK = DemoSizes(
    reach_episodes=4,
    pick_episodes=4,
    sft_steps=30,
    grpo_steps=4,
    grpo_samples=16,
    score_samples=4,
    vla_steps=20,
    vla_head_hidden_size=64,
    vla_head_layers=2,
    eval_episodes_per_task=2,
    holdout_every=4,
    vla_save_every=10,
    eval_every_checkpoint=True,
    cube_probe_frames=24,
    cube_probe_test=16,
)


@dataclass
class DemoConfig:
    output_dir: Path = Path("outputs/demo")
    quick: bool = False  # a few minutes: fewer episodes and training steps, every stage still runs
    sizes: DemoSizes = field(default_factory=DemoSizes)
    seed: int = 0
    eval_seed: int = 1000  # recording uses seeds from 10^7 up: evaluation episodes are held out
    # CPU threads per process (this one and every stage's subprocess). On a shared 2-core machine two OpenMP
    # threads per process ran a small MLP 19x slower than one (200 s vs 10.5 s, load 9); 0 = torch's default.
    cpu_threads: int = 1
    # Stages running at once, at most (the VLA rows beside the alignment); 2 uses both cores of a 2-core machine.
    parallel_stages: int = 2

    def __post_init__(self) -> None:
        if self.quick and self.sizes == DemoSizes():
            self.sizes = QUICK


def fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def remove(paths) -> None:
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


class Stages:
    """Runs named stages once per settings: a finished stage leaves ``stages/<name>.json``.

    Each stage's fingerprint hashes its own settings and its inputs' fingerprints. A finished stage
    with the same fingerprint is reused; one with another (``--quick`` results under a full run) is
    redone. A stage that was started (``<name>.started``) with the same fingerprint and killed keeps
    its outputs so it can resume from them; outputs of unknown or other settings are deleted first.
    """

    def __init__(self, output_dir: Path, parallel: int = 1):
        self.directory = output_dir / "stages"
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
                logger.info("demo: stage %s already complete with these settings, reused", name)
                return record["result"]
            print(f"demo: stage {name} was made with other settings: redoing it", flush=True)
            marker.unlink()
        if not (started.is_file() and started.read_text() == key):
            remove(outputs)  # never resume from another configuration's partial outputs
        with self.slots:
            started.write_text(key)
            print(f"\n=== roboalign demo: {name} ===", flush=True)
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


def dataset_args(cfg: DemoConfig, split: str = "all") -> list[str]:
    return [
        f"--dataset.repo_ids=[{REPO_ID}]",
        f"--dataset.roots=[{cfg.output_dir / 'dataset'}]",
        f"--dataset.chunk_size={cfg.sizes.chunk_size}",
        f"--dataset.seed={cfg.seed}",
        f"--dataset.holdout_every={cfg.sizes.holdout_every}",
        f"--dataset.split={split}",
        f"--dataset.include_state={ALIGN_WITH_STATE}",
        f"--dataset.state_names=[{','.join(ALIGN_STATE_NAMES)}]",
    ]


def recorded_episodes(sizes: DemoSizes) -> dict[str, int]:
    """Scripted episodes recorded per task, in TASKS order."""
    return dict(zip(TASKS, (sizes.reach_episodes, sizes.pick_episodes), strict=True))


def stage_record(cfg: DemoConfig) -> dict:
    from ..sim_demos import record_scripted_demos

    size = cfg.sizes.image_size
    return record_scripted_demos(
        cfg.output_dir / "dataset",
        REPO_ID,
        tasks=TASKS,
        episodes_per_task=recorded_episodes(cfg.sizes),
        seed=cfg.seed,
        image_hw=(size, size),
        workers=cfg.parallel_stages,
    )


def stage_backbone(cfg: DemoConfig) -> dict:
    from ..tiny_backbone import make_tiny_backbone

    return {"path": str(make_tiny_backbone(cfg.output_dir / "backbone", "qwen2_5_vl", seed=cfg.seed))}


def stage_tokenizer(cfg: DemoConfig) -> dict:
    output = cfg.output_dir / "fast_tokenizer"
    roboalign([
        "tokenizer", "fit",
        f"--dataset.repo_ids=[{REPO_ID}]",
        f"--dataset.roots=[{cfg.output_dir / 'dataset'}]",
        f"--chunk_size={cfg.sizes.chunk_size}",
        "--vocab_size=256",
        f"--scale={FAST_SCALE}",
        f"--output_dir={output}",
    ])  # fmt: skip
    return {"path": str(output)}


def stage_reason(cfg: DemoConfig) -> dict:
    output = cfg.output_dir / "reasoning.jsonl"
    roboalign(["align", "reason", *dataset_args(cfg), "--source=scripted", f"--output={output}"])
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


BLIND_ROWS = ("most frequent FAST sequence per task (blind)", "mean chunk per task (blind)")
BASELINE_FRAMES = 400  # training frames the blind baselines are fitted on (the sample loader decodes images)
# Departures from the paper's recipe, each because the backbone is a random 1M-parameter model, not a pretrained 7B
# (measured in an SFT sweep, docs/results.md): a random backbone has everything to learn, so a higher learning
# rate (paper: 2e-5) and a trained vision tower (paper: frozen; a random one has nothing to keep); the robot state
# is written into the prompt (the tiny model cannot read the arm's pose off 96x96 pixels in minutes); FAST's scale
# is 4 (FAST's default 10): coarser coefficients, shorter spans, which the tiny model learns sooner.
SFT_LR = 2e-3
FREEZE_VISION = False
ALIGN_WITH_STATE = True
# The state entries written: the end effector's position and the gripper, the quantities the actions (dx, dy, dz,
# grasp) change; the joint angles and velocities would triple the prompt's state text for no information the tiny
# model uses (SFT's cost grows with the tokens).
ALIGN_STATE_NAMES = ("ee_x", "ee_y", "ee_z", "gripper_pose")
FAST_SCALE = 4.0
GRPO_LR = 1e-4  # the paper's 1e-6 moves a 7B model; a 1M-parameter one needs more
VLA_LR = 1e-3  # a head trained from scratch in about a thousand steps (the policy's default 1e-4 suits 30K+)


def stage_sft(cfg: DemoConfig, backbone: str, fast: str, reasoning: str) -> dict:
    output = cfg.output_dir / "align_sft"
    roboalign([
        "align", "sft", *dataset_args(cfg, "train"),
        f"--model.path={backbone}",
        f"--model.fast_tokenizer={fast}",
        f"--reasoning={reasoning}",
        f"--model.freeze_vision={FREEZE_VISION}",
        f"--training.learning_rate={SFT_LR}",
        *training_args(output, cfg.sizes.sft_steps, 8, cfg.seed),
    ])  # fmt: skip
    return {"path": str(output / "model"), "metrics": str(output / "metrics.csv")}


def stage_grpo(cfg: DemoConfig, sft_model: str, reasoning: str) -> dict:
    output = cfg.output_dir / "align_grpo"
    sizes = cfg.sizes
    roboalign([
        "align", "grpo", *dataset_args(cfg, "train"),
        f"--dataset.num_samples={sizes.grpo_samples}",
        f"--model.path={sft_model}",
        f"--reasoning={reasoning}",
        f"--grpo.num_generations={sizes.grpo_generations}",
        "--grpo.max_completion_length=0",  # sized from the longest target completion
        f"--training.learning_rate={GRPO_LR}",
        *training_args(output, sizes.grpo_steps, sizes.grpo_generations * 2, cfg.seed),
    ])  # fmt: skip
    cap = json.loads((output / "completion_cap.json").read_text())
    return {"path": str(output / "model"), "metrics": str(output / "metrics.csv"), **cap}


def stage_score(cfg: DemoConfig, backbones: dict[str, str], fast_dir: str, reasoning_path: str) -> dict:
    """Each aligned backbone and the blind baselines on frames of held-out episodes, same frames for all."""
    from transformers import AutoTokenizer

    from ..action_vocab import ActionVocabulary
    from ..align.data import AlignDataConfig, load_samples, longest_target_tokens
    from ..align.grpo import COMPLETION_MARGIN
    from ..align.reason import read_reasoning
    from ..align.score import blind_baselines, paired_bootstrap, score_backbone
    from ..fast import FastTokenizer

    fast = FastTokenizer.from_pretrained(fast_dir)  # the one both backbones were aligned with
    common = dict(
        repo_ids=[REPO_ID], roots=[str(cfg.output_dir / "dataset")], chunk_size=cfg.sizes.chunk_size,
        holdout_every=cfg.sizes.holdout_every, include_state=ALIGN_WITH_STATE, state_names=list(ALIGN_STATE_NAMES),
    )  # fmt: skip
    heldout = load_samples(AlignDataConfig(**common, split="heldout", num_samples=cfg.sizes.score_samples, seed=cfg.seed + 1), fast)
    train = load_samples(AlignDataConfig(**common, split="train", num_samples=BASELINE_FRAMES, seed=cfg.seed), fast)
    first = next(iter(backbones.values()))
    reasoning = {key: row["reasoning"] for key, row in read_reasoning(Path(reasoning_path)).items()}
    longest = longest_target_tokens(
        heldout + train, reasoning, AutoTokenizer.from_pretrained(first), ActionVocabulary.from_pretrained(first)
    )
    cap = longest + COMPLETION_MARGIN
    models = {name: score_backbone(path, heldout, cap) for name, path in backbones.items()}
    sft, grpo = (models[name]["per_frame_action"] for name in backbones)
    baselines = blind_baselines(train, heldout, fast)
    mode, mean = (baselines[name] for name in BLIND_ROWS)
    versus_blind = {
        name: {  # positive = the model is better than the blind baseline, paired over the same frames
            "action": paired_bootstrap(mode["per_frame_action"], m["per_frame_action"], seed=cfg.seed),
            "l1_all": paired_bootstrap(m["per_frame_l1_all"], mean["per_frame_l1_all"], seed=cfg.seed),
            "l1_decoded": paired_on_decoded(m["per_frame_l1"], mean["per_frame_l1"], cfg.seed),
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
        "grpo_minus_sft_action": paired_bootstrap(sft, grpo, seed=cfg.seed),
    }


def stage_probe(cfg: DemoConfig, backbones: dict[str, str]) -> dict:
    """Linear probes of every backbone's image tokens for the action chunk, on the alignment's held-out episodes."""
    from ..align.data import AlignDataConfig
    from ..probe import probe_backbones

    sizes = cfg.sizes
    data = AlignDataConfig(repo_ids=[REPO_ID], roots=[str(cfg.output_dir / "dataset")], chunk_size=sizes.chunk_size,
                           holdout_every=sizes.holdout_every, image_size=sizes.image_size,
                           num_samples=sizes.probe_frames, seed=cfg.seed)  # fmt: skip
    return probe_backbones(backbones, data)


def stage_cube_probe(cfg: DemoConfig, backbones: dict[str, str]) -> dict:
    """Linear probes of every backbone's image tokens for the cube's position, on fresh first frames."""
    from ..probe import probe_cube_position

    sizes = cfg.sizes
    train_sizes = tuple(sorted({min(sizes.reach_episodes, sizes.cube_probe_frames), sizes.cube_probe_frames}))
    return probe_cube_position(backbones, TINY_VLM_LAYER, sizes.image_size, train_sizes, sizes.cube_probe_test,
                               seed=cfg.eval_seed + CUBE_PROBE_SEED_OFFSET)  # fmt: skip


def stage_train_vla(cfg: DemoConfig, name: str, backbone: str) -> dict:
    """lerobot-train, streamed; resumes from its last checkpoint when a previous run was killed."""
    output = cfg.output_dir / f"vla_{name}"
    sizes = cfg.sizes
    last_config = output / "checkpoints" / "last" / "pretrained_model" / "train_config.json"
    if last_config.is_file():
        args = [f"--config_path={last_config}", "--resume=true"]
        print(f"demo: resuming lerobot-train from {last_config.parent}", flush=True)
    else:
        remove([output])  # killed before its first checkpoint: start again
        extra = (
            f"--policy.chunk_size={sizes.chunk_size}",
            f"--policy.n_action_steps={sizes.n_action_steps}",
            f"--policy.scheduler_warmup_steps={max(1, sizes.vla_steps // 20)}",
            f"--policy.scheduler_decay_steps={sizes.vla_steps}",
            f"--policy.optimizer_lr={VLA_LR}",
            f"--policy.head_hidden_size={sizes.vla_head_hidden_size}",
            f"--policy.head_num_layers={sizes.vla_head_layers}",
        )
        dataset = cfg.output_dir / "dataset"
        args = train_args(
            dataset, REPO_ID, backbone, output, sizes.vla_steps, sizes.vla_batch_size, cfg.seed, extra,
            save_freq=min(sizes.vla_save_every, sizes.vla_steps),
        )  # fmt: skip
    log = run_lerobot("lerobot-train", args, stream=True, label=f"lerobot-train {name}")
    with (output / "lerobot-train.log").open("a") as file:
        file.write(log)
    return {"checkpoint": str(output / "checkpoints" / "last" / "pretrained_model"), "loss": train_losses(log)}


_LOSS_RE = re.compile(r"step:\s*(\S+).*?\bloss:\s*([0-9.eE+-]+)")


def train_losses(log: str) -> list[float]:
    """The loss of each of lerobot-train's periodic log lines."""
    return [float(match.group(2)) for match in _LOSS_RE.finditer(log)]


def count_successes(eval_info: dict) -> dict[str, dict]:
    """Per task: episodes, successes and each episode's outcome (seed order) from lerobot-eval's records."""
    counts: dict[str, dict] = {}
    for entry in eval_info["per_task"]:
        successes = [bool(s) for s in entry["metrics"]["successes"]]
        task = counts.setdefault(entry["task_group"], {"n_episodes": 0, "successes": 0, "episodes": []})
        task["n_episodes"] += len(successes)
        task["successes"] += sum(successes)
        task["episodes"] += successes
    return counts


def stage_eval_vla(cfg: DemoConfig, name: str, checkpoint: str, camera_off: bool = False) -> dict:
    """lerobot-eval on the demo's seeds; ``camera_off``: the same episodes with a grey camera frame (a control)."""
    output = cfg.output_dir / f"eval_{name}"
    remove([output])  # an evaluation killed midway restarts: its episodes are cheap and seeded
    log = run_lerobot("lerobot-eval", [
        f"--policy.path={checkpoint}",
        "--env.type=so101_lang",
        f"--env.task={','.join(TASKS)}",
        f"--env.observation_height={cfg.sizes.image_size}",
        f"--env.observation_width={cfg.sizes.image_size}",
        f"--eval.n_episodes={cfg.sizes.eval_episodes_per_task}",
        f"--eval.batch_size={min(2, cfg.sizes.eval_episodes_per_task)}",
        "--eval.use_async_envs=false",
        f"--seed={cfg.eval_seed}",
        f"--output_dir={output}",
        f"--env.camera_off={str(camera_off).lower()}",
    ], stream=True, label=f"lerobot-eval {name}")  # fmt: skip
    (output / "lerobot-eval.log").write_text(log)
    return count_successes(json.loads((output / "eval_info.json").read_text()))


def stage_expert(cfg: DemoConfig) -> dict:
    from ..sim_demos import evaluate_scripted_expert

    results = evaluate_scripted_expert(TASKS, cfg.sizes.eval_episodes_per_task, start_seed=cfg.eval_seed)
    return {
        task: {"n_episodes": r["n_episodes"], "successes": sum(r["successes"]), "episodes": r["successes"]}
        for task, r in results.items()
    }


def read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open() as file:
        return list(csv.DictReader(file))


def _curve(axis, rows: list[dict], key: str, title: str, xlabel: str) -> None:
    points = [(float(r["step"]), float(r[key])) for r in rows if r.get(key) not in (None, "") and r.get("step")]
    axis.plot([x for x, _ in points], [y for _, y in points], marker=".")
    axis.set_title(title)
    axis.set_xlabel(xlabel)


def subplots(*args, **kwargs):
    """matplotlib's ``subplots`` on the headless Agg backend (imported here: only the report needs it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def save_figure(cfg: DemoConfig, figure, name: str, dpi: int) -> str:
    """Write ``figure`` next to the report and free it; the file name, for the report's image link."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    figure.savefig(cfg.output_dir / name, dpi=dpi)
    plt.close(figure)
    return name


def plot_curves(cfg: DemoConfig, sft_metrics: list[dict], grpo_metrics: list[dict], vla_losses: dict) -> str:
    """One PNG with a learning curve per training stage: SFT loss, GRPO reward, each VLA's flow-matching loss."""
    figure, axes = subplots(1, 3, figsize=(13, 3.5))
    _curve(axes[0], sft_metrics, "loss", "SFT loss (train split)", "SFT step")
    reward_key = next((k for k in ("reward", "rewards/mean", "reward_mean") if grpo_metrics and k in grpo_metrics[0]), "reward")
    _curve(axes[1], grpo_metrics, reward_key, "GRPO mean reward (format + action) / 2", "GRPO step")
    for name, losses in vla_losses.items():
        every = max(1, cfg.sizes.vla_steps // 10)
        axes[2].plot([every * (i + 1) for i in range(len(losses))], losses, marker=".", label=name)
    axes[2].set_title("VLA flow-matching loss (lerobot-train)")
    axes[2].set_xlabel("lerobot-train step")
    axes[2].set_yscale("log")
    axes[2].legend(fontsize=7)
    return save_figure(cfg, figure, "learning_curves.png", dpi=110)


def plot_success(cfg: DemoConfig, evals: dict[str, dict]) -> str:
    figure, axis = subplots(figsize=(8, 4))
    width = 0.8 / len(evals)
    for i, (name, counts) in enumerate(evals.items()):
        rates, errors = [], [[], []]
        for task in TASKS:
            n, k = counts[task]["n_episodes"], counts[task]["successes"]
            low, high = wilson_interval(k, n)
            rates.append(k / n if n else 0.0)
            errors[0].append(max(0.0, rates[-1] - low))  # rounding can put the bound a hair past the rate
            errors[1].append(max(0.0, high - rates[-1]))
        axis.bar([t + i * width for t in range(len(TASKS))], rates, width, yerr=errors, capsize=3, label=name)
    axis.set_xticks([t + width * (len(evals) - 1) / 2 for t in range(len(TASKS))], TASKS)
    axis.set_ylabel("success rate (95% Wilson interval)")
    axis.set_ylim(0, 1.05)
    axis.legend(fontsize=7)
    return save_figure(cfg, figure, "success.png", dpi=120)


def plot_success_curves(cfg: DemoConfig, curves: dict[str, dict[int, dict]]) -> str:
    figure, axes = subplots(1, len(TASKS), figsize=(5 * len(TASKS), 3.5), squeeze=False)
    for axis, task in zip(axes[0], TASKS, strict=True):
        for name, curve in curves.items():
            steps = sorted(curve)
            rates = [curve[s][task]["successes"] / max(1, curve[s][task]["n_episodes"]) for s in steps]
            axis.plot(steps, rates, marker="o", label=name)
        axis.set_title(f"{task}: success vs training steps")
        axis.set_xlabel("lerobot-train step")
        axis.set_ylim(-0.02, 1.02)
    axes[0][0].set_ylabel("success rate (same seeds)")
    axes[0][0].legend(fontsize=7)
    return save_figure(cfg, figure, "success_vs_steps.png", dpi=110)


def success_cell(counts: dict) -> str:
    n, k = counts["n_episodes"], counts["successes"]
    low, high = wilson_interval(k, n)
    return f"{k}/{n} = {100 * k / n:.0f}% [{100 * low:.0f}, {100 * high:.0f}]"


def paired_cell(a: dict, b: dict) -> str:
    """Same seeds: episodes B won that A lost, and lost that A won."""
    won, lost = paired_counts(a["episodes"], b["episodes"])
    return f"+{won} / -{lost}"


def number(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def interval(d: dict) -> str:
    return f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"


def alignment_lines(scores: dict) -> list[str]:
    lines = [
        f"Greedy completions on {scores['n_frames']} frames of held-out episodes {scores['heldout_episodes']} "
        f"(alignment trained on the other episodes; the blind baselines fitted on frames of {len(scores['train_episodes'])} of them). Completion cap: "
        f"{scores['cap']} tokens; the longest target completion (reasoning + markup + FAST span) is "
        f"{scores['longest_target']} tokens. L1: mean |decoded - dataset chunk| in FAST's normalised units "
        "([-1, 1] per action dimension), over the completions that decode; \"all frames\" counts a span that does "
        "not decode as the all-zero chunk (openpi's fallback), so decoding only on easy frames cannot help. "
        "Baselines know the task but neither image nor state.",
        "",
        "| model | format rate | action-token prefix accuracy | decoded L1 | L1, all frames | decodes | "
        "reasoning tokens |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in scores["models"].items():
        lines.append(
            f"| {name} | {number(s['format'])} | {number(s['action'])} | {number(s['l1'])} | {number(s['l1_all'])} | "
            f"{number(s['decode_rate'], 2)} | {number(s['reasoning_tokens'], 1)} |"
        )
    for name, s in scores["baselines"].items():
        lines.append(f"| {name} | n/a | {number(s['action'])} | {number(s['l1'])} | {number(s['l1_all'])} | "
                     f"{number(s['decode_rate'], 2)} | n/a |")
    lines += ["", "Each model against the blind baselines, paired over the same frames (positive = the model is "
              "better; 95% bootstrap intervals):", ""]
    for name, versus in scores["versus_blind"].items():
        a, l1, decoded = versus["action"], versus["l1_all"], versus["l1_decoded"]
        on_decoded = f"{interval(decoded)} on the {decoded['n']} frames it decodes" if decoded else "n/a (nothing decodes)"
        lines.append(f"- {name}: prefix accuracy minus the most frequent sequence's {interval(a)}; mean chunk's L1 "
                     f"minus the model's: all frames {interval(l1)}, {on_decoded}.")
    d = scores["grpo_minus_sft_action"]
    lines += [
        "",
        f"GRPO minus SFT, action-token prefix accuracy, paired over the same {d['n']} frames: {d['mean']:+.3f} "
        f"(95% bootstrap interval [{d['low']:+.3f}, {d['high']:+.3f}]); GRPO better on {d['better']} frames, "
        f"worse on {d['worse']}.",
    ]
    return lines


def curve_lines(curves: dict[str, dict[int, dict]]) -> list[str]:
    """Success of each row's checkpoints on the same seeds: is a row still improving when training stops?"""
    steps = sorted(next(iter(curves.values())))
    lines = ["| policy | task | " + " | ".join(f"step {step}" for step in steps) + " |", "|---|---|" + "---|" * len(steps)]
    for name, curve in curves.items():
        for task in TASKS:
            cells = [f"{curve[step][task]['successes']}/{curve[step][task]['n_episodes']}" for step in steps]
            lines.append(f"| {name} | {task} | " + " | ".join(cells) + " |")
    return lines


def probe_lines(probe: dict) -> list[str]:
    layers = sorted(next(iter(probe["backbones"].values())), key=int)
    lines = [
        f"Ridge regression from features to the dataset's action chunk ({probe['n_frames']} frames; fitted on the "
        f"alignment's training episodes, R^2 on its {probe['n_heldout']} held-out frames; regularisation chosen on "
        "training episodes only). Image tokens are taken as the VLA reads them (its prompt and image size, the "
        "cut layer after the final norm). The head also gets the robot state and the instruction: from those alone "
        f"the probe reaches R^2 {probe['state_and_task']:.3f}. Cells: image tokens alone / state + task + image "
        f"tokens. The VLA's head reads layer {TINY_VLM_LAYER}.",
        "",
        "| backbone | " + " | ".join(f"layer {layer}" for layer in layers) + " |",
        "|---|" + "---|" * len(layers),
    ]
    for name, by_layer in probe["backbones"].items():
        cells = [f"{by_layer[layer]['image']:.3f} / {by_layer[layer]['with_context']:.3f}" for layer in layers]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def camera_off_lines(evals: dict[str, dict], camera_off: dict[str, dict]) -> list[str]:
    lines = [
        "Each VLA's final checkpoint again, on the same seeds, with the camera sending a uniform grey frame "
        "(`--env.camera_off=true`). Cells: successes with the camera / with it off (episodes won only with the "
        "camera / only without it). Success that survives the grey frame came from the state and instruction.",
        "",
        "| policy | " + " | ".join(TASKS) + " |",
        "|---|" + "---|" * len(TASKS),
    ]
    for name, off in camera_off.items():
        cells = [f"{evals[name][task]['successes']}/{evals[name][task]['n_episodes']} / "
                 f"{off[task]['successes']}/{off[task]['n_episodes']} ({paired_cell(off[task], evals[name][task])})"
                 for task in TASKS]  # fmt: skip
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def cube_probe_lines(cube: dict) -> list[str]:
    sizes = cube["train_sizes"]
    lines = [
        f"Ridge regression from the image tokens of layer {TINY_VLM_LAYER} (kept apart, one block of weights per "
        f"token) to the cube's (x, y), on first frames of fresh reach_and_close episodes, where the arm is at home "
        f"and only the cube moves; R^2 on {cube['n_test']} held-out frames, fitted on {' or '.join(map(str, sizes))} "
        f"frames ({sizes[0]}: at most as many as the recording's reach_and_close episodes). With the camera off the same probe "
        f"gives R^2 {next(iter(cube['camera_off'].values())):.3f}.",
        "",
        "| backbone | " + " | ".join(f"fitted on {n} frames" for n in sizes) + " |",
        "|---|" + "---|" * len(sizes),
    ]
    for name, by_size in cube["backbones"].items():
        lines.append(f"| {name} | " + " | ".join(f"{by_size[n]:.3f}" for n in sorted(by_size, key=int)) + " |")
    return lines


def report_header(cfg: DemoConfig) -> list[str]:
    """Title and mode; a quick run says first that its numbers are not results (0/N rows are expected there)."""
    lines = ["# RoboAlign demo (simulated SO-101, tiny random backbone)", ""]
    if cfg.quick:
        lines += [
            "**Quick sizes: this run checks that every stage runs, and says nothing about the method.** Its few "
            "episodes and training steps leave the trained rows near 0 successes by design; the method's numbers "
            "come from the default sizes (`roboalign demo`, docs/results.md).",
            "",
        ]
    return [*lines, f"Mode: {'quick' if cfg.quick else 'full'}; sizes: `{json.dumps(asdict(cfg.sizes))}`.", ""]


def format_report(
    cfg: DemoConfig, evals: dict[str, dict], scores: dict, walls: dict[str, float], pairs: list[tuple[str, str]],
    elapsed_s: float, curves: dict[str, dict[int, dict]], probe: dict, camera_off: dict[str, dict],
) -> str:
    lines = [
        *report_header(cfg),
        "What the policy sees: one 96x96 front camera image, the 14-D robot state (`agent_pos`: joints and "
        "gripper, no cube or goal position) and the instruction. pick_and_place names its goal in the "
        "instruction (one of a few places on the table); the cube position is only in the image.",
        "",
        "## Closed-loop success (lerobot-eval, held-out seeds)",
        "",
        "| policy | " + " | ".join(TASKS) + " |",
        "|---|" + "---|" * len(TASKS),
    ]
    for name, counts in evals.items():
        lines.append(f"| {name} | " + " | ".join(success_cell(counts[task]) for task in TASKS) + " |")
    lines += [
        "",
        "Paired over the same seeds (episodes the second row won that the first lost / lost that it won):",
        "",
        "| comparison | " + " | ".join(TASKS) + " |",
        "|---|" + "---|" * len(TASKS),
    ]
    for a, b in pairs:
        cells = [paired_cell(evals[a][task], evals[b][task]) for task in TASKS]
        lines.append(f"| {b} vs {a} | " + " | ".join(cells) + " |")
    lines += ["", "## Does the VLA use the camera? (camera off, same seeds)", "", *camera_off_lines(evals, camera_off)]
    lines += ["", "## Success against VLA training steps (same seeds)", "", *curve_lines(curves)]
    lines += ["", "## Alignment of each backbone (held-out episodes)", "", *alignment_lines(scores)]
    lines += ["", "## What the head can read: linear probes for the action chunk", "", *probe_lines(probe)]
    lines += ["", "## Is the cube in the image tokens? Linear probes for its position", "", *cube_probe_lines(probe["cube"])]
    lines += ["", "## Wall time per stage", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {stage} | {seconds:.0f} |" for stage, seconds in walls.items()]
    lines += ["", f"Elapsed: {elapsed_s / 60:.1f} min for this invocation (stages run two at a time, so the stage "
              f"times add up to {sum(walls.values()) / 60:.1f} min; a resumed run counts only what it redid).", ""]
    return "\n".join(lines)


def limit_threads(threads: int) -> None:
    """Set the thread count here and, through the environment, in every subprocess the stages start."""
    if threads > 0:
        import torch

        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


def eval_settings(cfg: DemoConfig) -> dict:
    """What an evaluation's outcome depends on (the VLA rows' and the expert's)."""
    return {"episodes": cfg.sizes.eval_episodes_per_task, "seed": cfg.eval_seed, "image": cfg.sizes.image_size}


def checkpoint_steps(sizes: DemoSizes) -> list[int]:
    """The training steps whose checkpoints are evaluated: the last, and with ``eval_every_checkpoint`` every one
    lerobot-train saves (every ``vla_save_every``)."""
    every = min(sizes.vla_save_every, sizes.vla_steps) if sizes.eval_every_checkpoint else sizes.vla_steps
    return sorted({*range(every, sizes.vla_steps, every), sizes.vla_steps}, reverse=True)  # the row's result first


def vla_row(cfg: DemoConfig, stages: Stages, key: str, path: str, source: str) -> tuple[dict, dict[int, dict], dict]:
    """Train one VLA on ``path`` with lerobot-train, then evaluate each of its checkpoints with lerobot-eval on the
    same seeds, and the last one again with the camera off: (train result, eval counts per training step, the last
    step being the row's result; eval counts with the camera off)."""
    from lerobot.common.train_utils import get_step_checkpoint_dir

    sizes, out = cfg.sizes, cfg.output_dir
    keys = ("vla_steps", "vla_batch_size", "chunk_size", "n_action_steps", "vla_head_hidden_size", "vla_head_layers")
    settings = {k: getattr(sizes, k) for k in keys}
    vla = stages.run(f"vla_{key}", lambda: stage_train_vla(cfg, key, path), {**settings, "lr": VLA_LR},
                     ("record", source), outputs=(out / f"vla_{key}",))  # fmt: skip
    curve = {}
    for step in checkpoint_steps(sizes):
        name = key if step == sizes.vla_steps else f"{key}_{step}"
        checkpoint = get_step_checkpoint_dir(out / f"vla_{key}", sizes.vla_steps, step) / "pretrained_model"
        curve[step] = stages.run(f"eval_{name}", lambda n=name, c=checkpoint: stage_eval_vla(cfg, n, str(c)),
                                 eval_settings(cfg), (f"vla_{key}",))  # fmt: skip
    final = str(get_step_checkpoint_dir(out / f"vla_{key}", sizes.vla_steps, sizes.vla_steps) / "pretrained_model")
    camera_off = stages.run(f"eval_{key}_camera_off", lambda: stage_eval_vla(cfg, f"{key}_camera_off", final, True),
                            {**eval_settings(cfg), "camera_off": True}, (f"vla_{key}",))  # fmt: skip
    return vla, curve, camera_off


def run(cfg: DemoConfig) -> Path:
    start = time.perf_counter()
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    limit_threads(cfg.cpu_threads)
    out, sizes = cfg.output_dir, cfg.sizes
    stages = Stages(out, cfg.parallel_stages)
    record_settings = {"episodes": recorded_episodes(sizes), "image": sizes.image_size, "seed": cfg.seed,
                       "frames": "lossless H.264"}  # fmt: skip
    stages.run("record", lambda: stage_record(cfg), record_settings,
               outputs=(out / "dataset", out / "dataset.recording", out / "dataset.merging"))  # fmt: skip
    backbone = stages.run("backbone", lambda: stage_backbone(cfg), {"seed": cfg.seed}, outputs=(out / "backbone",))["path"]
    names = {"base": "base backbone (unaligned)", "sft": "RoboAlign without RL (SFT)", "roboalign": "RoboAlign (SFT + GRPO)"}
    # The VLA rows run beside the alignment (their own processes, one CPU thread each): the base row needs only the
    # recording and the base backbone, so it trains while SFT runs; the SFT row trains while GRPO runs.
    with ThreadPoolExecutor(max_workers=max(1, cfg.parallel_stages)) as pool:
        rows = {"base": pool.submit(vla_row, cfg, stages, "base", backbone, "backbone")}
        fast = stages.run("tokenizer", lambda: stage_tokenizer(cfg), {"chunk": sizes.chunk_size, "scale": FAST_SCALE},
                          ("record",), outputs=(out / "fast_tokenizer",))["path"]  # fmt: skip
        reasoning = stages.run("reason", lambda: stage_reason(cfg), {"source": "scripted"}, ("record",),
                               outputs=(out / "reasoning.jsonl",))["path"]  # fmt: skip
        align_inputs = ("record", "backbone", "tokenizer", "reason")
        sft_settings = {"steps": sizes.sft_steps, "lr": SFT_LR, "holdout": sizes.holdout_every, "seed": cfg.seed,
                        "state": ALIGN_WITH_STATE, "state_names": ALIGN_STATE_NAMES,
                        "freeze_vision": FREEZE_VISION}  # fmt: skip
        sft = stages.run("sft", lambda: stage_sft(cfg, backbone, fast, reasoning), sft_settings, align_inputs,
                         outputs=(out / "align_sft",))  # fmt: skip
        rows["sft"] = pool.submit(vla_row, cfg, stages, "sft", sft["path"], "sft")  # beside GRPO
        grpo_settings = {"steps": sizes.grpo_steps, "lr": GRPO_LR, "samples": sizes.grpo_samples,
                         "g": sizes.grpo_generations}  # fmt: skip
        grpo = stages.run("grpo", lambda: stage_grpo(cfg, sft["path"], reasoning), grpo_settings, ("sft",),
                          outputs=(out / "align_grpo",))  # fmt: skip
        rows["roboalign"] = pool.submit(vla_row, cfg, stages, "roboalign", grpo["path"], "grpo")
        aligned = {names["sft"]: sft["path"], names["roboalign"]: grpo["path"]}
        rows["sft"].result()  # the analysis below then takes the core the SFT row leaves, not the GRPO row's
        expert = stages.run("expert", lambda: stage_expert(cfg), eval_settings(cfg))
        scores = stages.run("score", lambda: stage_score(cfg, aligned, fast, reasoning),
                            {"frames": sizes.score_samples, "l1_on_decoded_frames": True}, ("grpo",))  # fmt: skip
        probe = stages.run("probe", lambda: stage_probe(cfg, {names["base"]: backbone, **aligned}),
                           {"holdout": sizes.holdout_every, "layer": TINY_VLM_LAYER, "frames": sizes.probe_frames},
                           ("grpo",))  # fmt: skip
        cube_settings = {"layer": TINY_VLM_LAYER, "frames": sizes.cube_probe_frames, "test": sizes.cube_probe_test,
                         "episodes": recorded_episodes(sizes), "image": sizes.image_size, "seed": cfg.eval_seed}  # fmt: skip
        probe["cube"] = stages.run("cube_probe", lambda: stage_cube_probe(cfg, {names["base"]: backbone, **aligned}),
                                   cube_settings, ("grpo",))  # fmt: skip
        results = {key: future.result() for key, future in rows.items()}
    curves = {f"VLA on {names[key]}": curve for key, (_, curve, _) in results.items()}
    evals = {name: curve[sizes.vla_steps] for name, curve in curves.items()}
    camera_off = {f"VLA on {names[key]}": counts for key, (_, _, counts) in results.items()}
    losses = {names[key]: vla["loss"] for key, (vla, _, _) in results.items()}
    pairs = list(combinations(evals, 2))  # base-SFT, base-GRPO, SFT-GRPO, in the rows' order
    evals["scripted expert (reference)"] = expert
    report = format_report(cfg, evals, scores, stages.wall_times(), pairs, time.perf_counter() - start, curves, probe,
                           camera_off)  # fmt: skip
    plots = [plot_success(cfg, evals), plot_success_curves(cfg, curves),
             plot_curves(cfg, read_metrics(Path(sft["metrics"])), read_metrics(Path(grpo["metrics"])), losses)]
    report += "\n" + "\n".join(f"![{p}]({p})" for p in plots) + "\n"
    (out / "report.md").write_text(report)
    print(report)
    return out / "report.md"


def parse_config(argv: list[str]) -> DemoConfig:
    """``--quick`` takes the quick sizes as its base; ``--sizes.*`` given with it change only those fields."""
    argv = ["--quick=true" if arg == "--quick" else arg for arg in argv]
    cfg = draccus.parse(config_class=DemoConfig, args=argv)
    if cfg.quick:
        given = {arg.removeprefix("--sizes.").split("=", 1)[0] for arg in argv if arg.startswith("--sizes.")}
        cfg.sizes = replace(QUICK, **{name: getattr(cfg.sizes, name) for name in given})
    return cfg


def main(argv: list[str] | None = None) -> Path:
    logging.basicConfig(level=logging.INFO)
    return run(parse_config(list(argv or [])))
