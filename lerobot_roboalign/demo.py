"""`roboalign demo`: the whole RoboAlign pipeline offline, on a simulated SO-101, in minutes.

It calls the public commands a user runs at scale (``roboalign tokenizer fit``,
``roboalign align reason|sft|grpo``, ``lerobot-train``, ``lerobot-eval``); only the data source
(scripted simulator demonstrations) and the tiny random backbone are demo-specific. The paper's
"RoboAlign without RL" vs "RoboAlign" rows are reproduced in miniature: two VLAs that differ only
in their backbone (after SFT, after SFT + GRPO), evaluated closed loop on held-out seeds, next to
the scripted expert. Every stage records its wall time and is skipped on re-run once complete,
so an interrupted demo resumes where it stopped.
"""

import csv
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import draccus

from .cli import main as roboalign
from .runner import run_lerobot, train_args

logger = logging.getLogger(__name__)

TASKS = ("reach_and_close", "pick_and_place")
REPO_ID = "local/so101_scripted"
Z_95 = 1.959963984540054


@dataclass
class DemoSizes:
    """How much of everything; the defaults fit about 20 minutes on 2 CPU cores."""

    episodes_per_task: int = 30
    image_size: int = 96
    chunk_size: int = 16
    n_action_steps: int = 8
    sft_steps: int = 600
    grpo_steps: int = 64
    grpo_generations: int = 4
    grpo_samples: int = 64
    score_samples: int = 16
    vla_steps: int = 3000
    vla_batch_size: int = 8
    eval_episodes_per_task: int = 20


QUICK = DemoSizes(
    episodes_per_task=4,
    sft_steps=30,
    grpo_steps=4,
    grpo_samples=16,
    score_samples=4,
    vla_steps=20,
    eval_episodes_per_task=2,
)


@dataclass
class DemoConfig:
    output_dir: Path = Path("outputs/demo")
    quick: bool = False  # a few minutes: fewer episodes and training steps, every stage still runs
    sizes: DemoSizes = field(default_factory=DemoSizes)
    seed: int = 0
    eval_seed: int = 1000  # recording uses seeds from 10^7 up: evaluation episodes are held out

    def __post_init__(self) -> None:
        if self.quick and self.sizes == DemoSizes():
            self.sizes = QUICK


class Stages:
    """Runs named stages once: a finished stage leaves ``stages/<name>.json`` (result + wall time)."""

    def __init__(self, output_dir: Path):
        self.directory = output_dir / "stages"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.order: list[str] = []

    def run(self, name: str, work: Callable[[], dict]) -> dict:
        marker = self.directory / f"{name}.json"
        self.order.append(name)
        if marker.is_file():
            logger.info("demo: stage %s already complete, skipped", name)
            return json.loads(marker.read_text())["result"]
        print(f"\n=== roboalign demo: {name} ===", flush=True)
        start = time.perf_counter()
        result = work()
        record = {"result": result, "wall_s": time.perf_counter() - start}
        tmp = marker.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=2, default=str))
        os.replace(tmp, marker)
        return result

    def wall_times(self) -> dict[str, float]:
        """Seconds per stage in pipeline order (as measured when each stage actually ran)."""
        return {name: json.loads((self.directory / f"{name}.json").read_text())["wall_s"] for name in self.order}


def wilson_interval(successes: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval: honest at the small n and 0%/100% rates a demo produces."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denominator = 1 + Z_95**2 / n
    centre = (p + Z_95**2 / (2 * n)) / denominator
    half = Z_95 * math.sqrt(p * (1 - p) / n + Z_95**2 / (4 * n * n)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def dataset_args(cfg: DemoConfig) -> list[str]:
    return [
        f"--dataset.repo_ids=[{REPO_ID}]",
        f"--dataset.roots=[{cfg.output_dir / 'dataset'}]",
        f"--dataset.chunk_size={cfg.sizes.chunk_size}",
        f"--dataset.seed={cfg.seed}",
    ]


def stage_record(cfg: DemoConfig) -> dict:
    from .sim_demos import record_scripted_demos

    size = cfg.sizes.image_size
    return record_scripted_demos(
        cfg.output_dir / "dataset",
        REPO_ID,
        tasks=TASKS,
        episodes_per_task=cfg.sizes.episodes_per_task,
        seed=cfg.seed,
        image_hw=(size, size),
    )


def stage_backbone(cfg: DemoConfig) -> dict:
    from .tiny_backbone import make_tiny_backbone

    return {"path": str(make_tiny_backbone(cfg.output_dir / "backbone", "qwen2_5_vl", seed=cfg.seed))}


def stage_tokenizer(cfg: DemoConfig) -> dict:
    output = cfg.output_dir / "fast_tokenizer"
    roboalign([
        "tokenizer", "fit",
        f"--dataset.repo_ids=[{REPO_ID}]",
        f"--dataset.root={cfg.output_dir / 'dataset'}",
        f"--chunk_size={cfg.sizes.chunk_size}",
        "--vocab_size=256",
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


def stage_sft(cfg: DemoConfig, backbone: str, fast: str, reasoning: str) -> dict:
    output = cfg.output_dir / "align_sft"
    roboalign([
        "align", "sft", *dataset_args(cfg),
        f"--model.path={backbone}",
        f"--model.fast_tokenizer={fast}",
        f"--reasoning={reasoning}",
        "--training.learning_rate=5e-3",  # a random tiny backbone has everything to learn
        *training_args(output, cfg.sizes.sft_steps, 8, cfg.seed),
    ])  # fmt: skip
    return {"path": str(output / "model"), "metrics": str(output / "metrics.csv")}


def stage_grpo(cfg: DemoConfig, sft_model: str) -> dict:
    output = cfg.output_dir / "align_grpo"
    sizes = cfg.sizes
    roboalign([
        "align", "grpo", *dataset_args(cfg),
        f"--dataset.num_samples={sizes.grpo_samples}",
        f"--model.path={sft_model}",
        f"--grpo.num_generations={sizes.grpo_generations}",
        "--grpo.max_completion_length=64",
        "--training.learning_rate=1e-4",  # the paper's 1e-6 moves a 7B model; a 1M-parameter one needs more
        *training_args(output, sizes.grpo_steps, sizes.grpo_generations * 2, cfg.seed),
    ])  # fmt: skip
    return {"path": str(output / "model"), "metrics": str(output / "metrics.csv")}


def stage_score(cfg: DemoConfig, backbones: dict[str, str], fast_dir: str) -> dict:
    """Format rate, action-token prefix accuracy and reward of each backbone, same held-out prompts."""
    from .align.data import AlignDataConfig, load_samples
    from .align.grpo import score_model
    from .fast import FastTokenizer

    fast = FastTokenizer.from_pretrained(fast_dir)  # the one both backbones were aligned with
    data = AlignDataConfig(
        repo_ids=[REPO_ID],
        roots=[str(cfg.output_dir / "dataset")],
        chunk_size=cfg.sizes.chunk_size,
        num_samples=cfg.sizes.score_samples,
        seed=cfg.seed + 1,
    )
    samples = load_samples(data, fast)
    return {name: score_model(path, samples, seed=cfg.seed) for name, path in backbones.items()}


def stage_train_vla(cfg: DemoConfig, name: str, backbone: str) -> dict:
    output = cfg.output_dir / f"vla_{name}"
    sizes = cfg.sizes
    extra = (
        f"--policy.chunk_size={sizes.chunk_size}",
        f"--policy.n_action_steps={sizes.n_action_steps}",
        f"--policy.scheduler_warmup_steps={max(1, sizes.vla_steps // 20)}",
        f"--policy.scheduler_decay_steps={sizes.vla_steps}",
    )
    dataset = cfg.output_dir / "dataset"
    args = train_args(dataset, REPO_ID, backbone, output, sizes.vla_steps, sizes.vla_batch_size, cfg.seed, extra)
    log = run_lerobot("lerobot-train", args)
    (output / "lerobot-train.log").write_text(log)
    return {"checkpoint": str(output / "checkpoints" / "last" / "pretrained_model")}


def count_successes(eval_info: dict) -> dict[str, dict]:
    """Per task: episodes and successes counted from lerobot-eval's per-episode records."""
    counts: dict[str, dict] = {}
    for entry in eval_info["per_task"]:
        successes = [bool(s) for s in entry["metrics"]["successes"]]
        task = counts.setdefault(entry["task_group"], {"n_episodes": 0, "successes": 0})
        task["n_episodes"] += len(successes)
        task["successes"] += sum(successes)
    return counts


def stage_eval_vla(cfg: DemoConfig, name: str, checkpoint: str) -> dict:
    output = cfg.output_dir / f"eval_{name}"
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
    ])  # fmt: skip
    (output / "lerobot-eval.log").write_text(log)
    return count_successes(json.loads((output / "eval_info.json").read_text()))


def stage_expert(cfg: DemoConfig) -> dict:
    from .sim_demos import evaluate_scripted_expert

    results = evaluate_scripted_expert(TASKS, cfg.sizes.eval_episodes_per_task, start_seed=cfg.eval_seed)
    return {task: {"n_episodes": r["n_episodes"], "successes": sum(r["successes"])} for task, r in results.items()}


def read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open() as file:
        return list(csv.DictReader(file))


def plot_report(cfg: DemoConfig, evals: dict[str, dict], grpo_metrics: list[dict]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    reward_key = next((k for k in ("reward", "rewards/mean", "reward_mean") if grpo_metrics and k in grpo_metrics[0]), None)
    rows = [r for r in grpo_metrics if reward_key and r.get(reward_key)]
    if rows:
        figure, axis = plt.subplots(figsize=(5, 3.5))
        axis.plot([float(r["step"]) for r in rows], [float(r[reward_key]) for r in rows], marker="o")
        axis.set_xlabel("GRPO step")
        axis.set_ylabel("mean reward (format + action) / 2")
        axis.set_title("GRPO reward")
        figure.tight_layout()
        figure.savefig(cfg.output_dir / "grpo_reward.png", dpi=120)
        paths.append("grpo_reward.png")
    figure, axis = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(evals)
    for i, (name, counts) in enumerate(evals.items()):
        rates, errors = [], [[], []]
        for task in TASKS:
            n, k = counts[task]["n_episodes"], counts[task]["successes"]
            low, high = wilson_interval(k, n)
            rates.append(k / n if n else 0.0)
            errors[0].append(rates[-1] - low)
            errors[1].append(high - rates[-1])
        axis.bar([t + i * width for t in range(len(TASKS))], rates, width, yerr=errors, capsize=3, label=name)
    axis.set_xticks([t + width * (len(evals) - 1) / 2 for t in range(len(TASKS))], TASKS)
    axis.set_ylabel("success rate (95% Wilson interval)")
    axis.set_ylim(0, 1.05)
    axis.legend()
    figure.tight_layout()
    figure.savefig(cfg.output_dir / "success.png", dpi=120)
    paths.append("success.png")
    return paths


def format_report(cfg: DemoConfig, evals: dict[str, dict], scores: dict[str, dict], walls: dict[str, float]) -> str:
    lines = [
        "# RoboAlign demo (simulated SO-101, tiny random backbone)",
        "",
        f"Mode: {'quick' if cfg.quick else 'full'}; sizes: `{json.dumps(asdict(cfg.sizes))}`.",
        "",
        "## Closed-loop success (lerobot-eval, held-out seeds)",
        "",
        "| policy | " + " | ".join(TASKS) + " |",
        "|---|" + "---|" * len(TASKS),
    ]
    for name, counts in evals.items():
        cells = []
        for task in TASKS:
            n, k = counts[task]["n_episodes"], counts[task]["successes"]
            low, high = wilson_interval(k, n)
            cells.append(f"{k}/{n} = {100 * k / n:.0f}% [{100 * low:.0f}, {100 * high:.0f}]")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Alignment of each backbone (sampled completions on held-out frames)",
        "",
        "| backbone | format rate | action-token prefix accuracy | reward |",
        "|---|---|---|---|",
    ]
    for name, score in scores.items():
        lines.append(f"| {name} | {score['format']:.3f} | {score['action']:.3f} | {score['reward']:.3f} |")
    lines += ["", "## Wall time per stage", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {stage} | {seconds:.0f} |" for stage, seconds in walls.items()]
    lines += ["", f"Total: {sum(walls.values()) / 60:.1f} min.", ""]
    return "\n".join(lines)


def run(cfg: DemoConfig) -> Path:
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    stages = Stages(cfg.output_dir)
    stages.run("record", lambda: stage_record(cfg))
    backbone = stages.run("backbone", lambda: stage_backbone(cfg))["path"]
    fast = stages.run("tokenizer", lambda: stage_tokenizer(cfg))["path"]
    reasoning = stages.run("reason", lambda: stage_reason(cfg))["path"]
    sft = stages.run("sft", lambda: stage_sft(cfg, backbone, fast, reasoning))
    grpo = stages.run("grpo", lambda: stage_grpo(cfg, sft["path"]))
    backbones = {"RoboAlign without RL (SFT)": sft["path"], "RoboAlign (SFT + GRPO)": grpo["path"]}
    scores = stages.run("score", lambda: stage_score(cfg, backbones, fast))
    evals = {}
    for key, (name, path) in zip(("sft", "roboalign"), backbones.items(), strict=True):
        checkpoint = stages.run(f"vla_{key}", lambda k=key, p=path: stage_train_vla(cfg, k, p))["checkpoint"]
        evals[f"VLA on {name}"] = stages.run(f"eval_{key}", lambda k=key, c=checkpoint: stage_eval_vla(cfg, k, c))
    evals["scripted expert (reference)"] = stages.run("expert", lambda: stage_expert(cfg))
    report = format_report(cfg, evals, scores, stages.wall_times())
    plots = plot_report(cfg, evals, read_metrics(Path(grpo["metrics"])))
    report += "\n" + "\n".join(f"![{p}]({p})" for p in plots) + "\n"
    (cfg.output_dir / "report.md").write_text(report)
    print(report)
    return cfg.output_dir / "report.md"


def main(argv: list[str] | None = None) -> Path:
    argv = ["--quick=true" if arg == "--quick" else arg for arg in (argv or [])]
    logging.basicConfig(level=logging.INFO)
    return run(draccus.parse(config_class=DemoConfig, args=argv))
