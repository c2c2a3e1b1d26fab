"""The study's report: study/report.md, results.json and PNGs, the decision by the pre-registered rule.

Everything here reads the stages' results; nothing is measured again. The statistics are demo/statistics.py's
(cluster bootstrap over head seeds and episodes, exact McNemar stratified by head seed).
"""

import json
from pathlib import Path

import numpy as np

from .config import ROW_NAMES, TASKS, StudyConfig
from .plan import PlannedStage

# (B, A): B minus A. The primary endpoint first; the secondary ones are reported, never used to rescue it.
COMPARISONS = (("roboalign", "base"), ("roboalign", "matched_sft"), ("sft", "base"))
PRIMARY = COMPARISONS[0]


def row_successes(
    cfg: StudyConfig, results: dict[str, dict]
) -> tuple[dict[str, np.ndarray], np.ndarray, list]:
    """Per row a (head seeds, episodes) success array, episodes in one order for every row (task, then seed),
    the episodes' tasks and their (task, seed) keys. Refuses rows evaluated on other seeds."""
    first = results[f"eval_{cfg.row_order()[0]}_s{cfg.head_seeds[0]}"]
    keys = [(task, seed) for task in TASKS for seed in sorted(first[task], key=int)]
    arrays = {}
    for row in cfg.row_order():
        evals = [results[f"eval_{row}_s{seed}"] for seed in cfg.head_seeds]
        if any(sorted(e[task]) != sorted(first[task]) for e in evals for task in TASKS):
            raise ValueError(
                f"row {row} was evaluated on other seeds than the others: rerun its eval stages."
            )
        arrays[row] = np.array([[e[task][seed] for task, seed in keys] for e in evals], dtype=float)
    return arrays, np.array([task for task, _ in keys]), keys


def statistics(cfg: StudyConfig, results: dict[str, dict]) -> dict:
    """Success per row and the paired comparisons (those whose rows ran)."""
    from ..demo.statistics import paired_difference, row_success

    arrays, strata, keys = row_successes(cfg, results)
    rows = {row: row_success(array, strata, seed=cfg.seed) for row, array in arrays.items()}
    for row, array in arrays.items():
        rows[row]["per_task"] = {task: float(array[:, strata == task].mean()) for task in TASKS}
    comparisons = {
        f"{b} - {a}": paired_difference(arrays[a], arrays[b], strata, seed=cfg.seed)
        for b, a in COMPARISONS
        if a in arrays and b in arrays
    }
    return {"rows": rows, "comparisons": comparisons, "n_episodes": len(keys), "head_seeds": cfg.head_seeds}


def versus_blind_low(score: dict, model: str) -> float | None:
    """Lower 95% bound of a model's prefix accuracy minus the blind most-frequent sequence's."""
    versus = score["versus_blind"].get(model)
    return None if versus is None else versus["action"]["low"]


def failing_link(scores: dict | None, probe: dict | None) -> str:
    """Which link of docs/study.md's chain the measurements break first: alignment, transfer or head."""
    if not scores:
        return "not measured (no GRPO row ran, so no alignment scores)"
    model = "SFT + GRPO" if "SFT + GRPO" in scores["alignment"]["models"] else "SFT"
    if (versus_blind_low(scores["alignment"], model) or 0) <= 0:
        return (f"alignment: {model}'s action-token prefix accuracy on held-out alignment frames is not above the "
                "blind most-frequent sequence's (95% interval includes 0 or lies below)")  # fmt: skip
    if (versus_blind_low(scores["target"], model) or 0) <= 0:
        return f"transfer: {model} is above blind on held-out alignment frames but not on the target tasks' frames"
    if probe and {"roboalign", "base"} <= set(probe["rows"]):
        largest = max(probe["demos"])
        aligned, base = probe["rows"]["roboalign"][largest]["r2"], probe["rows"]["base"][largest]["r2"]
        if aligned <= base:
            return (
                f"transfer to the features: aligned on target frames, yet the probe reads no more of the action "
                f"from RoboAlign's frozen features than from the base's (R^2 {aligned:.3f} vs {base:.3f})"
            )
        return (
            f"head: RoboAlign's features carry more of the action (probe R^2 {aligned:.3f} vs base {base:.3f}), "
            "and the head trained on them does not turn it into more successes"
        )
    return "head (the probe did not run for both rows, so features could not be checked)"


def decision_lines(stats: dict, scores: dict | None, probe: dict | None) -> list[str]:
    key = " - ".join(PRIMARY)
    primary = stats["comparisons"].get(key)
    if primary is None:
        return ["The primary endpoint (RoboAlign - base) was not run: both rows are needed."]
    from ..demo.statistics import NO_DIFFERENCE, decision

    verdict = decision(primary["low"], primary["high"])
    same = " (the two rows won exactly the same episodes: no difference shown)" * (
        primary["verdict"] == NO_DIFFERENCE
    )
    lines = [f"**Primary endpoint, RoboAlign - base: {primary['mean']:+.3f} [{primary['low']:+.3f}, "
             f"{primary['high']:+.3f}] -> the claim is {verdict.upper()}**{same} (pre-registered rule: supported "
             "if the 95% interval lies above 0, contradicted if below, not shown otherwise)."]  # fmt: skip
    if verdict != "supported":
        lines.append(f"Failing link, from the measured quantities: {failing_link(scores, probe)}.")
    return lines


def alignment_lines(scores: dict) -> list[str]:
    lines = []
    for where, label in (("alignment", "held-out alignment frames"), ("target", "target-task frames")):
        score = scores[where]
        lines += [f"On {score['n_frames']} {label} (completion cap {score['cap']}, longest target "
                  f"{score['longest_target']}):", "", "| model | format | decoded | at cap | prefix accuracy | "
                  "greedy reward | decoded L1 | prefix accuracy - blind [95%] |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for name, m in {**score["models"], **score["baselines"]}.items():
            versus = score["versus_blind"].get(name)  # none for the baselines themselves
            reward = (
                None if m.get("format") is None else (m["format"] + m["action"]) / 2
            )  # GRPO's reward, greedy
            lines.append(f"| {name} | {number(m.get('format'))} | {number(m.get('decode_rate'))} | "
                         f"{m.get('hit_cap', 'n/a')} | {number(m['action'])} | {number(reward)} | {number(m['l1'])} | "
                         f"{interval(versus['action']) if versus else 'n/a'} |")  # fmt: skip
        d = score.get("grpo_minus_sft_action")
        if d:
            lines += [
                "",
                f"GRPO - SFT prefix accuracy: {d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}].",
            ]
        lines.append("")
    return lines


def interval(d: dict) -> str:
    return f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"


def number(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def reward_line(results: dict) -> str:
    """GRPO's mean reward at its first and last logged step (metrics.csv)."""
    from ..demo.plots import read_metrics

    if "grpo" not in results:
        return "GRPO did not run."
    rows = [r for r in read_metrics(Path(results["grpo"]["metrics"])) if r.get("reward") not in (None, "")]
    if not rows:
        return "GRPO logged no reward."
    return (
        f"GRPO mean reward: {float(rows[0]['reward']):.3f} at step {rows[0]['step']}, "
        f"{float(rows[-1]['reward']):.3f} at step {rows[-1]['step']}."
    )


def success_lines(stats: dict) -> list[str]:
    lines = ["| row | success [95% cluster bootstrap] | " + " | ".join(TASKS) + " | per head seed (Wilson 95%) |",
             "|---|---|" + "---|" * len(TASKS) + "---|"]  # fmt: skip
    for row, r in stats["rows"].items():
        seeds = "; ".join(f"{s['successes']}/{s['n']} [{s['wilson'][0]:.2f}, {s['wilson'][1]:.2f}]"
                          for s in r["per_seed"])  # fmt: skip
        tasks = " | ".join(f"{r['per_task'][task]:.3f}" for task in TASKS)
        lines.append(
            f"| {ROW_NAMES[row]} | {r['mean']:.3f} [{r['low']:.3f}, {r['high']:.3f}] | {tasks} | {seeds} |"
        )
    lines += ["", "| comparison | difference [95%] | won / lost episodes | McNemar (exact, head-seed strata) | "
              "verdict |", "|---|---|---|---|---|"]  # fmt: skip
    for name, c in stats["comparisons"].items():
        m = c["mcnemar"]
        test = f"{m['b_only']} vs {m['a_only']}, p = {m['p_value']:.3g}" if m else "n/a"
        lines.append(f"| {name} | {c['mean']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}] | +{c['won']} / -{c['lost']} "
                     f"| {test} | {c['verdict']} |")  # fmt: skip
    return lines


def probe_lines(probe: dict) -> list[str]:
    demos = probe["demos"]
    lines = [
        f"Ridge probe, held-out R^2 / L1 on {probe['n_test_frames']} target-task frames (layer {probe['layer']},"
        " mean-pooled image tokens + instruction), per demonstrations per task:",
        "",
        "| features | " + " | ".join(f"{n} demos" for n in demos) + " |",
        "|---|" + "---|" * len(demos),
    ]
    for name, by_n in {**probe["rows"], "blind (instruction's mean chunk)": probe["blind"]}.items():
        cells = " | ".join(f"{by_n[n]['r2']:.3f} / {by_n[n]['l1']:.3f}" for n in demos)
        lines.append(f"| {ROW_NAMES.get(name, name)} | {cells} |")
    return lines


def vqa_lines(vqa: dict, seed: int) -> list[str]:
    """Held-out scene-question accuracy per backbone with its Wilson interval, per question type, and the paired
    difference to the image-blind majority answer (bootstrap over questions, stratified by type)."""
    from ..demo.statistics import paired_difference, wilson_interval

    types = np.array(vqa["types"])
    kinds = sorted(set(vqa["types"]))
    blind = np.array([vqa["correct"]["blind majority"]], dtype=float)
    lines = [f"{len(types)} held-out scene questions (scenes no model trained on), answers ranked "
             "by likelihood:", "", "| backbone | accuracy [Wilson 95%] | " + " | ".join(kinds) +
             " | minus blind majority [95%] |", "|---|---|" + "---|" * len(kinds) + "---|"]  # fmt: skip
    for name, correct in vqa["correct"].items():
        array = np.array(correct, dtype=float)
        low, high = wilson_interval(int(array.sum()), array.size)
        per_type = " | ".join(f"{array[types == kind].mean():.2f}" for kind in kinds)
        versus = ("n/a" if name == "blind majority" else
                  interval(paired_difference(blind, array[None], types, seed=seed)))  # fmt: skip
        lines.append(f"| {ROW_NAMES.get(name, name)} | {array.mean():.3f} [{low:.3f}, {high:.3f}] | {per_type} | "
                     f"{versus} |")  # fmt: skip
    return lines


def plot_success(output_dir: Path, stats: dict) -> str:
    from ..demo.plots import save_figure, subplots

    figure, (left, right) = subplots(1, 2, figsize=(11, 3.8))
    rows = list(stats["rows"])
    means = [stats["rows"][r]["mean"] for r in rows]
    errors = [[m - stats["rows"][r]["low"] for r, m in zip(rows, means)],
              [stats["rows"][r]["high"] - m for r, m in zip(rows, means)]]  # fmt: skip
    left.bar([ROW_NAMES[r] for r in rows], means, yerr=np.maximum(errors, 0), capsize=4)
    left.set_ylabel("success (95% cluster bootstrap)")
    left.set_ylim(0, 1.05)
    left.tick_params(axis="x", labelrotation=15, labelsize=7)
    names = list(stats["comparisons"])
    for i, name in enumerate(names):
        c = stats["comparisons"][name]
        right.errorbar(
            [c["mean"]], [i], xerr=[[c["mean"] - c["low"]], [c["high"] - c["mean"]]], fmt="o", capsize=4
        )
    right.axvline(0, color="grey", linewidth=1)
    right.set_yticks(range(len(names)), names)
    right.set_xlabel("paired success difference (95% interval)")
    return save_figure(output_dir, figure, "success.png", dpi=120)


def plot_probe(output_dir: Path, probe: dict) -> str:
    from ..demo.plots import save_figure, subplots

    figure, axes = subplots(1, 2, figsize=(10, 3.6))
    for name, by_n in {**probe["rows"], "blind": probe["blind"]}.items():
        for axis, metric in zip(axes, ("r2", "l1"), strict=True):
            axis.plot(probe["demos"], [by_n[n][metric] for n in probe["demos"]], marker="o",
                      label=ROW_NAMES.get(name, name), linestyle="--" if name == "blind" else "-")  # fmt: skip
    for axis, label in zip(axes, ("held-out R^2", "held-out L1 (normalised chunk)"), strict=True):
        axis.set_xscale("log")
        axis.set_xlabel("demonstrations per task")
        axis.set_ylabel(label)
    axes[0].legend(fontsize=7)
    return save_figure(output_dir, figure, "probe.png", dpi=120)


def plot_learning(output_dir: Path, cfg: StudyConfig, results: dict) -> str:
    """SFT loss, GRPO reward and the first head seed's flow-matching loss per row (the demo's plot)."""
    from ..demo.plots import plot_curves, read_metrics

    metrics = {
        name: read_metrics(Path(results[name]["metrics"])) if name in results else []
        for name in ("sft", "grpo")
    }
    losses = {ROW_NAMES[row]: results[f"head_{row}_s{cfg.head_seeds[0]}"]["loss"] for row in cfg.row_order()}
    return plot_curves(output_dir, metrics["sft"], metrics["grpo"], losses, cfg.sizes.head_steps)


def write_report(
    cfg: StudyConfig, plan: list[PlannedStage], results: dict, walls: dict, elapsed_s: float
) -> Path:
    """report.md, results.json and the PNGs, in ``<output_dir>/study/``."""
    out = cfg.output_dir / "study"
    out.mkdir(parents=True, exist_ok=True)
    stats = statistics(cfg, results)
    scores, probe = results.get("score"), results.get("probe_curve")
    probe = probe and {**probe, "rows": {row: {int(n): v for n, v in by_n.items()} for row, by_n in probe["rows"].items()},
                       "blind": {int(n): v for n, v in probe["blind"].items()}}  # fmt: skip
    mode = (
        "tiny (checks the chain; its numbers mean nothing)" if cfg.tiny else "pilot" if cfg.pilot else "final"
    )
    lines = [
        "# RoboAlign transfer study (docs/study.md)",
        "",
        f"Mode: **{mode}**; base: {cfg.base}; state text in the prompt: {cfg.state_text}; GRPO budget: "
        f"{cfg.grpo_budget}x; head seeds {cfg.head_seeds}; {stats['n_episodes']} evaluation episodes per head "
        f"(seeds from {cfg.eval_seed}).",
        "",
        *decision_lines(stats, scores, probe),
        "",
        "## Success per row and paired differences",
        "",
        *success_lines(stats),
        "",
        "![success](success.png)",
    ]
    if scores:
        lines += [
            "",
            "## Alignment before and after GRPO",
            "",
            reward_line(results),
            "",
            *alignment_lines(scores),
            f"![learning curves]({plot_learning(out, cfg, results)})",
        ]
    if probe:
        lines += [
            "",
            "## Sample-efficiency probe",
            "",
            *probe_lines(probe),
            "",
            f"![probe]({plot_probe(out, probe)})",
        ]
    if results.get("vqa_score"):
        lines += ["", "## Scene questions: what the base knows, and what alignment kept", "",
                  *vqa_lines(results["vqa_score"], cfg.seed)]  # fmt: skip
    lines += ["", "## Wall time per stage", "", "| stage | seconds |", "|---|---|",
              *(f"| {name} | {seconds:.0f} |" for name, seconds in walls.items()), "",
              f"Elapsed: {elapsed_s / 60:.1f} min for this invocation (reused stages count 0).", ""]  # fmt: skip
    plot_success(out, stats)
    (out / "report.md").write_text("\n".join(lines))
    (out / "results.json").write_text(json.dumps(
        {"config": repr(cfg), "statistics": stats, "scores": scores, "probe": probe, "vqa": results.get("vqa_score"), "walls": walls,
         "plan": [stage.name for stage in plan]}, indent=2, default=str))  # fmt: skip
    print("\n".join(lines), flush=True)
    return out / "report.md"
