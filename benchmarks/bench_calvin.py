"""CALVIN's simulator on this CPU: seconds per env step and per chain, EGL vs pybullet's TinyRenderer.

Same run, same scene D, same initial state and actions for both renderers: env build, chain reset,
and env step (8 physics substeps + the 200x200 static and 84x84 gripper cameras + the task
oracle's info). Per chain: one reset plus 360 steps (first instruction failed at the limit) up to
5 x 360 (every instruction used its full budget); policy inference comes on top.
Writes benchmarks/results/calvin.{json,md,png}. Run: ``python benchmarks/bench_calvin.py [--steps N]``.
"""

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
RENDERERS = {"egl": True, "tiny": False}
STEPS_PER_INSTRUCTION, CHAIN_LENGTH, NUM_CHAINS = 360, 5, 1000


def measure(use_egl: bool, steps: int, resets: int) -> dict:
    from lerobot_roboalign.calvin.env import CalvinChainEnv
    from lerobot_roboalign.calvin.protocol import initial_states

    start = time.perf_counter()
    sim = CalvinChainEnv(use_egl=use_egl)
    build = time.perf_counter() - start
    start = time.perf_counter()
    for initial_state in initial_states()[:resets]:
        sim.reset_to(initial_state)
    reset = (time.perf_counter() - start) / resets
    sim.begin_subtask()
    actions = np.random.default_rng(0).uniform(-1, 1, (steps, 7))
    durations = []
    for action in actions:
        start = time.perf_counter()
        sim.step(action)
        sim.task_completed("open_drawer")
        durations.append(time.perf_counter() - start)
    sim.close()
    step = float(np.median(durations))
    return {
        "build_s": build,
        "reset_s": reset,
        "step_s_median": step,
        "step_s_p90": float(np.percentile(durations, 90)),
        "chain_s_min": reset + STEPS_PER_INSTRUCTION * step,
        "chain_s_max": reset + CHAIN_LENGTH * STEPS_PER_INSTRUCTION * step,
    }


def write(results: dict, meta: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "calvin.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    egl, tiny = results["egl"], results["tiny"]
    lines = [
        f"# CALVIN simulator cost ({meta['machine']}, load {meta['load_before']} before the run)",
        "",
        "| renderer | build (s) | reset (s) | step median (s) | step p90 (s) | chain (min) | chain (max) "
        f"| {NUM_CHAINS} chains (h, min-max) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['build_s']:.2f} | {r['reset_s']:.3f} | {r['step_s_median']:.3f} | {r['step_s_p90']:.3f} "
            f"| {r['chain_s_min']:.0f} s | {r['chain_s_max']:.0f} s | {NUM_CHAINS * r['chain_s_min'] / 3600:.1f}-"
            f"{NUM_CHAINS * r['chain_s_max'] / 3600:.1f} |"
        )
    lines += [
        "",
        f"EGL / TinyRenderer step time: {egl['step_s_median'] / tiny['step_s_median']:.2f}x. "
        "Chain: one reset + 360 steps (failed first instruction) to 5 x 360 steps; policy time excluded.",
    ]
    (RESULTS / "calvin.md").write_text("\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = list(results)
    ax.bar(names, [1000 * results[n]["step_s_median"] for n in names], color=["tab:blue", "tab:orange"])
    ax.set(ylabel="ms per env step (median)", title="CALVIN scene D, static 200x200 + gripper 84x84")
    fig.tight_layout()
    fig.savefig(RESULTS / "calvin.png", dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--resets", type=int, default=5)
    args = parser.parse_args()
    meta = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "load_before": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "steps": args.steps,
    }
    results = {name: measure(use_egl, args.steps, args.resets) for name, use_egl in RENDERERS.items()}
    meta["load_after"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    write(results, meta)
    print((RESULTS / "calvin.md").read_text())


if __name__ == "__main__":
    main()
