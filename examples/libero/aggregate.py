"""Per-suite and average LIBERO success from lerobot-eval runs, next to the paper's numbers.

    python examples/libero/aggregate.py outputs/eval/libero_{spatial,object,goal,10} --output_dir=outputs/eval

Reads each run's ``eval_info.json`` (written by ``lerobot-eval``), and writes
``libero_results.json``, ``libero_results.md`` and ``libero_results.png``.
"""

import argparse
import json
from pathlib import Path

SUITES = {"libero_spatial": "Spatial", "libero_object": "Object", "libero_goal": "Goal", "libero_10": "Long"}
EPISODES_PER_SUITE = 500  # 10 tasks x 50 fixed initial states
PAPER = {  # success %, arXiv 2603.21341
    "RoboAlign (Qwen2.5-VL-7B)": {"Spatial": 93.8, "Object": 96.0, "Goal": 87.2, "Long": 70.0, "Avg": 86.8},
    "Qwen2.5-VL-7B base": {"Spatial": 95.2, "Object": 95.0, "Goal": 42.4, "Long": 63.2, "Avg": 73.9},
    "RoboAlign (Qwen3-VL-8B)": {"Spatial": 95.6, "Object": 99.6, "Goal": 95.2, "Long": 78.6, "Avg": 92.5},
}


def collect(run_dirs: list[Path]) -> dict[str, dict]:
    """Suite name -> {success %, episodes}, from every run's per-suite aggregate."""
    suites: dict[str, dict] = {}
    for run in run_dirs:
        info_file = run / "eval_info.json" if run.is_dir() else run
        if not info_file.is_file():
            raise FileNotFoundError(
                f"{info_file} not found: pass the --output_dir of a finished lerobot-eval run."
            )
        for suite, stats in json.loads(info_file.read_text())["per_group"].items():
            if suite in suites:
                raise ValueError(f"Suite {suite} appears in two runs; pass each suite's run once.")
            suites[suite] = {"success": stats["pc_success"], "episodes": stats["n_episodes"]}
    return suites


def summarize(suites: dict[str, dict]) -> dict:
    missing = [s for s in SUITES if s not in suites]
    row = {SUITES[s]: suites[s]["success"] for s in SUITES if s in suites}
    if not missing:
        row["Avg"] = sum(row.values()) / len(SUITES)
    partial = {s: v["episodes"] for s, v in suites.items() if v["episodes"] != EPISODES_PER_SUITE}
    return {"suites": suites, "row": row, "missing_suites": missing, "non_standard_episode_counts": partial}


def markdown(summary: dict) -> str:
    columns = [*SUITES.values(), "Avg"]
    lines = ["| | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    cell = lambda row, c: f"{row[c]:.1f}" if c in row else "-"
    lines.append("| this run | " + " | ".join(cell(summary["row"], c) for c in columns) + " |")
    lines += [
        f"| {name} (paper) | " + " | ".join(cell(row, c) for c in columns) + " |"
        for name, row in PAPER.items()
    ]
    if summary["non_standard_episode_counts"]:
        lines.append(f"\nNot the standard 500 episodes per suite: {summary['non_standard_episode_counts']}")
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    columns = [*SUITES.values(), "Avg"]
    rows = {"this run": summary["row"], **{f"{k} (paper)": v for k, v in PAPER.items()}}
    width = 0.8 / len(rows)
    fig, ax = plt.subplots(figsize=(8, 4))
    for i, (name, row) in enumerate(rows.items()):
        ax.bar(np.arange(len(columns)) + i * width, [row.get(c, 0.0) for c in columns], width, label=name)
    ax.set_xticks(np.arange(len(columns)) + width * (len(rows) - 1) / 2, columns)
    ax.set(ylabel="success (%)", ylim=(0, 100), title="LIBERO success rate")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "runs", nargs="+", type=Path, help="lerobot-eval output dirs (or eval_info.json files)"
    )
    parser.add_argument("--output_dir", type=Path, default=Path("outputs/eval"))
    args = parser.parse_args()
    summary = summarize(collect(args.runs))
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "libero_results.json").write_text(json.dumps(summary, indent=2))
    table = markdown(summary)
    (args.output_dir / "libero_results.md").write_text(table)
    plot(summary, args.output_dir / "libero_results.png")
    print(table)


if __name__ == "__main__":
    main()
