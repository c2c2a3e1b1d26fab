"""The demo's PNG figures: success with intervals, success against training steps, learning curves."""

import csv
from pathlib import Path

from .config import TASKS
from .statistics import wilson_interval


def read_metrics(path: Path) -> list[dict]:
    """The rows of a training stage's metrics.csv (none if the stage wrote no file)."""
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


def save_figure(output_dir: Path, figure, name: str, dpi: int) -> str:
    """Write ``figure`` into ``output_dir`` (next to the report) and free it; the file name, for the report's image link."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    figure.savefig(output_dir / name, dpi=dpi)
    plt.close(figure)
    return name


def plot_curves(
    output_dir: Path, sft_metrics: list[dict], grpo_metrics: list[dict], vla_losses: dict, vla_steps: int
) -> str:
    """One PNG with a learning curve per training stage: SFT loss, GRPO reward, each VLA's flow-matching loss
    (lerobot-train logs it every ``vla_steps // 10`` steps)."""
    figure, axes = subplots(1, 3, figsize=(13, 3.5))
    _curve(axes[0], sft_metrics, "loss", "SFT loss (train split)", "SFT step")
    reward_key = next((k for k in ("reward", "rewards/mean", "reward_mean") if grpo_metrics and k in grpo_metrics[0]), "reward")
    _curve(axes[1], grpo_metrics, reward_key, "GRPO mean reward (format + action) / 2", "GRPO step")
    for name, losses in vla_losses.items():
        every = max(1, vla_steps // 10)
        axes[2].plot([every * (i + 1) for i in range(len(losses))], losses, marker=".", label=name)
    axes[2].set_title("VLA flow-matching loss (lerobot-train)")
    axes[2].set_xlabel("lerobot-train step")
    axes[2].set_yscale("log")
    axes[2].legend(fontsize=7)
    return save_figure(output_dir, figure, "learning_curves.png", dpi=110)


def plot_success(output_dir: Path, evals: dict[str, dict], tasks: tuple[str, ...] = TASKS) -> str:
    """Success rate per policy and task with its 95% Wilson interval."""
    figure, axis = subplots(figsize=(8, 4))
    width = 0.8 / len(evals)
    for i, (name, counts) in enumerate(evals.items()):
        rates, errors = [], [[], []]
        for task in tasks:
            n, k = counts[task]["n_episodes"], counts[task]["successes"]
            low, high = wilson_interval(k, n)
            rates.append(k / n if n else 0.0)
            errors[0].append(max(0.0, rates[-1] - low))  # rounding can put the bound a hair past the rate
            errors[1].append(max(0.0, high - rates[-1]))
        axis.bar([t + i * width for t in range(len(tasks))], rates, width, yerr=errors, capsize=3, label=name)
    axis.set_xticks([t + width * (len(evals) - 1) / 2 for t in range(len(tasks))], tasks)
    axis.set_ylabel("success rate (95% Wilson interval)")
    axis.set_ylim(0, 1.05)
    axis.legend(fontsize=7)
    return save_figure(output_dir, figure, "success.png", dpi=120)


def plot_success_curves(output_dir: Path, curves: dict[str, dict[int, dict]], tasks: tuple[str, ...] = TASKS) -> str:
    """Success per task against the training step of each row's evaluated checkpoints (same seeds)."""
    figure, axes = subplots(1, len(tasks), figsize=(5 * len(tasks), 3.5), squeeze=False)
    for axis, task in zip(axes[0], tasks, strict=True):
        for name, curve in curves.items():
            steps = sorted(curve)
            rates = [curve[s][task]["successes"] / max(1, curve[s][task]["n_episodes"]) for s in steps]
            axis.plot(steps, rates, marker="o", label=name)
        axis.set_title(f"{task}: success vs training steps")
        axis.set_xlabel("lerobot-train step")
        axis.set_ylim(-0.02, 1.02)
    axes[0][0].set_ylabel("success rate (same seeds)")
    axes[0][0].legend(fontsize=7)
    return save_figure(output_dir, figure, "success_vs_steps.png", dpi=110)
