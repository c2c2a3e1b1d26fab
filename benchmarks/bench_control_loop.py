"""Control loop of ``lerobot-rollout`` on a virtual SO-101 at 30 fps: sync vs Real-Time Chunking.

LeRobot's rollout, robot, Feetech bus and SDK run unchanged over a virtual serial port
(tests/robots/roboalign_virtual_hw.py), so the numbers are the loop's own cost plus inference
on this machine. One run, side by side: a no-model loop, RoboAlign sync and RTC, and LeRobot's
SmolVLA sync and RTC as the peer (tiny backbones of the same size: 128-wide, 4-layer text
models, each cut at layer 2; chunks of 32 steps, 16 executed per sync inference), each also
with an added inference delay per chunk (100 ms, 250 ms: a 7B backbone on a consumer GPU).
Reported per loop: achieved rate,
p50/p99/max control period, and the boundary smoothness ratio (largest action change at a
chunk boundary over the p99 change inside chunks, max over joints, in joint units as sent).

    python benchmarks/bench_control_loop.py [--checkpoint=PATH] [--smolvla-checkpoint=PATH] [--seconds=15]

Without checkpoints, tiny ones are trained first with lerobot-train (a few minutes). The full run
(13 loops) takes about 13 x (seconds + 15 s of start-up). Writes benchmarks/results/control_loop.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "robots"))
RESULTS = ROOT / "benchmarks" / "results"
FPS = 30
DELAYS_S = (0.0, 0.1, 0.25)
# Chunks of 32 steps (~1 s), 16 executed per sync inference. RTC replaces the queue with each new chunk
# minus the inference delay d (steps), and a new inference takes d steps again, so the arm keeps 30 Hz
# only if chunk_size >= 2 d: at +250 ms, d = 9 here (8 for the delay, 1 for the tiny model), so 16-step
# chunks ran dry (22 Hz measured) while 32-step chunks keep it (README 'Inference modes').
CHUNK_SIZE, N_ACTION_STEPS = 32, 16
SETTLE_S = 1.0  # measured after the start-up (see measure)
LOOPS = [("no_model", "sync")] + [(p, m) for p in ("roboalign", "smolvla") for m in ("sync", "rtc")]


def tiny_checkpoints(work: Path, need_roboalign: bool, need_smolvla: bool) -> tuple[Path, Path]:
    """Train tiny RoboAlign (Qwen2.5-VL) and SmolVLA (SmolVLM) checkpoints on the same synthetic data."""
    from lerobot_roboalign.runner import run_lerobot, train_args
    from lerobot_roboalign.synthetic import write_synthetic_dataset
    from lerobot_roboalign.tiny_backbone import make_tiny_backbone

    dataset = write_synthetic_dataset(work / "dataset")
    if need_roboalign:
        backbone = make_tiny_backbone(work / "backbone", "qwen2_5_vl")
        chunking = (f"--policy.chunk_size={CHUNK_SIZE}", f"--policy.n_action_steps={N_ACTION_STEPS}")
        args = train_args(work / "dataset", dataset.repo_id, backbone, work / "train", 2, extra=chunking)
        run_lerobot("lerobot-train", args)
    if need_smolvla:
        smolvlm = make_tiny_backbone(work / "smolvlm", "smolvlm")
        run_lerobot("lerobot-train", [
            f"--dataset.repo_id={dataset.repo_id}", f"--dataset.root={work / 'dataset'}", "--policy.type=smolvla",
            f"--policy.vlm_model_name={smolvlm}", "--policy.load_vlm_weights=false", "--policy.num_vlm_layers=2",
            f"--policy.chunk_size={CHUNK_SIZE}", f"--policy.n_action_steps={N_ACTION_STEPS}",
            "--policy.device=cpu",
            "--policy.push_to_hub=false", "--steps=2", "--batch_size=2", "--save_freq=2", "--num_workers=0",
            f"--output_dir={work / 'train_smolvla'}",
        ])  # fmt: skip
    last = "checkpoints/last/pretrained_model"
    return work / "train" / last, work / "train_smolvla" / last


def timed_rollout(kind: str, mode: str, checkpoint: Path, work: Path, seconds: float, delay: float) -> dict:
    """Run lerobot-rollout over the virtual arm; record every action sent and every chunk boundary."""
    import roboalign_virtual_hw as hw
    import torch
    from conftest import FOLLOWER_PORT, virtualize
    from lerobot.policies.rtc import ActionQueue
    from lerobot.policies.smolvla.modeling_smolvla import VLAFlowMatching
    from lerobot.rollout.robot_wrapper import ThreadSafeRobot
    from lerobot.scripts.lerobot_rollout import main

    from lerobot_roboalign.action_head import FlowMatchingActionHead
    from lerobot_roboalign.calibration import main_check
    from lerobot_roboalign.modeling_roboalign import RoboAlignPolicy

    run = work / f"{kind}_{mode}_{int(delay * 1000)}"
    bound = run / "pretrained_model"
    shutil.copytree(checkpoint, bound)
    if kind != "smolvla":
        main_check([str(ROOT / "calibration/so101_follower.json"), "--robot.type=so101_follower", f"--checkpoint={bound}"])
    features = json.loads((bound / "config.json").read_text())["input_features"]
    cameras = {k.rsplit(".", 1)[-1]: tuple(v["shape"][1:]) for k, v in features.items() if v["type"] == "VISUAL"}
    name = "rollout_rtc.yaml" if mode == "rtc" else "rollout.yaml"
    config = virtualize(ROOT / "robots/so101" / name, run, cameras)

    stamps, sent, boundaries = [], [], []
    originals = {
        (ThreadSafeRobot, "send_action"): ThreadSafeRobot.send_action,
        (ActionQueue, "merge"): ActionQueue.merge,
        (FlowMatchingActionHead, "sample"): FlowMatchingActionHead.sample,
        (VLAFlowMatching, "sample_actions"): VLAFlowMatching.sample_actions,
        (RoboAlignPolicy, "predict_action_chunk"): RoboAlignPolicy.predict_action_chunk,
    }

    def send(robot, action):
        stamps.append(time.perf_counter())
        sent.append([action[k] for k in sorted(action)])
        return originals[(ThreadSafeRobot, "send_action")](robot, action)

    def merge(queue, *args, **kwargs):  # RTC: the next action sent is the new chunk's first
        boundaries.append(len(sent))
        return originals[(ActionQueue, "merge")](queue, *args, **kwargs)

    def slowed(owner, method):
        def sample(*args, **kwargs):
            if mode == "sync":  # sync: the action sent after this call is the new chunk's first
                boundaries.append(len(sent))
            time.sleep(delay)  # stands for a large backbone's latency
            return originals[(owner, method)](*args, **kwargs)

        return sample

    def no_model(self, batch, **kwargs):  # the peer loop: a constant chunk, no model cost
        boundaries.append(len(sent))
        return torch.zeros(1, self.config.chunk_size, self.config.action_feature.shape[0])

    patches = {
        (ThreadSafeRobot, "send_action"): send,
        (ActionQueue, "merge"): merge,
        (FlowMatchingActionHead, "sample"): slowed(FlowMatchingActionHead, "sample"),
        (VLAFlowMatching, "sample_actions"): slowed(VLAFlowMatching, "sample_actions"),
    }
    if kind == "no_model":
        patches[(RoboAlignPolicy, "predict_action_chunk")] = no_model
    for (owner, method), function in patches.items():
        setattr(owner, method, function)
    arm = hw.VirtualArm.from_file("so101_follower", ROOT / "calibration/so101_follower.json")
    sys.argv = ["lerobot-rollout", f"--config_path={config}", f"--policy.path={bound}", "--device=cpu",
                f"--duration={seconds}", "--return_to_initial_position=false"]  # fmt: skip
    try:
        with hw.virtual_ports({FOLLOWER_PORT: arm}):
            main()
    finally:
        for (owner, method), function in originals.items():
            setattr(owner, method, function)
    return measure(stamps, sent, boundaries)


def smoothness(steps: np.ndarray, boundaries: list[int], start: int) -> tuple[float, float]:
    """Largest action change at a chunk boundary and the p99 change inside chunks, from step ``start``."""
    at_boundary = sorted({k - 1 for k in boundaries if start <= k - 1 < len(steps)})
    inside = np.delete(steps[start:], [j - start for j in at_boundary])
    return (float(steps[at_boundary].max()) if at_boundary else 0.0,
            float(np.percentile(inside, 99)) if inside.size else 0.0)  # fmt: skip


def measure(stamps: list[float], sent: list[list[float]], boundaries: list[int]) -> dict:
    """Periods and smoothness in steady state: after the first SETTLE_S seconds.

    They hold the first chunks (cold caches, RTC's empty start) and the arm walking from its rest pose
    into the policy's range at the rate limit (e.g. the gripper from 50 to the synthetic data's 0..1.3),
    which is the safety step's start, not a chunk switch; the ratio over the whole run is kept too.
    """
    first = (boundaries[0] if boundaries else 0) + 1
    start = max(first, int(SETTLE_S * FPS))
    periods = np.diff(stamps[start:]) * 1e3
    if len(periods) < 2:  # the loop sent (almost) nothing after its first chunk: report it, do not crash
        periods = np.array([np.nan, np.nan])
    actions = np.asarray(sent, dtype=float) if sent else np.zeros((0, 1))
    steps = np.abs(np.diff(actions, axis=0)).max(axis=1, initial=0)  # step k: sent[k + 1] - sent[k]
    worst, p99_inside = smoothness(steps, boundaries, start)
    worst_all, p99_all = smoothness(steps, boundaries, first)
    return {
        "steps": len(stamps),
        "chunks": len(boundaries),
        "achieved_hz": float(1e3 / np.nanmean(periods)) if not np.isnan(periods).all() else 0.0,
        "period_p50_ms": float(np.percentile(periods, 50)),
        "period_p99_ms": float(np.percentile(periods, 99)),
        "period_max_ms": float(np.nanmax(periods)) if not np.isnan(periods).all() else float("nan"),
        "boundary_max_step": worst,
        "inside_p99_step": p99_inside,
        "boundary_ratio": worst / p99_inside if p99_inside > 0 else float("nan"),
        "boundary_ratio_with_start": worst_all / p99_all if p99_all > 0 else float("nan"),
        "periods_ms": periods.tolist(),
        "trace": [a[0] for a in sent],  # elbow_flex (first in sorted key order), for the plot
        "boundaries": boundaries,
    }


def report(results: dict, load: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    RESULTS.mkdir(parents=True, exist_ok=True)
    peer = results["no_model_sync_0ms"]
    summary = {name: {k: v for k, v in r.items() if k not in ("periods_ms", "trace", "boundaries")}
               for name, r in results.items()}  # fmt: skip
    for name, r in summary.items():
        r["p99_over_no_model"] = r["period_p99_ms"] / peer["period_p99_ms"]
    summary["_meta"] = {"target_hz": FPS, "load_average_before": load, "cpu_count": os.cpu_count()}
    (RESULTS / "control_loop.json").write_text(json.dumps(summary, indent=2))
    header = ("| loop | added delay | chunks | achieved Hz | p50 ms | p99 ms | max ms | p99 / no-model "
              "| boundary ratio | ratio with start-up |")  # fmt: skip
    rows = [header, "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in summary.items():
        if name.startswith("_"):
            continue
        loop, delay = name.rsplit("_", 1)
        rows.append(f"| {loop} | {delay} | {r['chunks']} | {r['achieved_hz']:.1f} | {r['period_p50_ms']:.1f} | "
                    f"{r['period_p99_ms']:.1f} | {r['period_max_ms']:.1f} | {r['p99_over_no_model']:.2f}x | "
                    f"{r['boundary_ratio']:.2f} | {r['boundary_ratio_with_start']:.2f} |")  # fmt: skip
    rows.append(f"\nTarget {FPS} Hz = {1e3 / FPS:.1f} ms. Load average before the run: {load} "
                f"({os.cpu_count()} cores). Boundary ratio: largest action change at a chunk boundary / p99 "
                "change inside chunks (max over joints, as sent to the arm). Periods and ratio after the "
                f"first {SETTLE_S:.0f} s (first chunks; the arm walking from its rest pose into the policy's "
                "range at the rate limit); 'with start-up': the ratio from the first chunk on. Chunks of "
                f"{CHUNK_SIZE} steps, {N_ACTION_STEPS} executed per sync inference.")  # fmt: skip
    (RESULTS / "control_loop.md").write_text(
        "# Control loop, virtual SO-101, lerobot-rollout, 30 fps, CPU\n\n" + "\n".join(rows) + "\n"
    )
    fig, axes = plt.subplots(2, len(DELAYS_S), figsize=(5 * len(DELAYS_S), 7), squeeze=False)
    for column, delay in enumerate(DELAYS_S):
        tag = f"{int(delay * 1000)}ms"
        for name, r in results.items():
            if not name.endswith(f"_{tag}") and not name.startswith("no_model"):
                continue
            label = name.rsplit("_", 1)[0]
            axes[0, column].plot(r["periods_ms"], label=f"{label} ({r['achieved_hz']:.1f} Hz)", lw=0.7)
            if name.startswith("no_model"):
                continue
            window = r["trace"][:150]
            line = axes[1, column].plot(window, label=label, lw=0.9)[0]
            marks = [k for k in r["boundaries"] if k < len(window)]
            axes[1, column].plot(marks, [window[k] for k in marks], "o", ms=3, color=line.get_color())
        axes[0, column].axhline(1e3 / FPS, color="k", ls="--", lw=0.8)
        axes[0, column].set(title=f"added delay {tag}", xlabel="control step", ylabel="period (ms)", yscale="log")
        axes[1, column].set(xlabel="control step", ylabel="elbow_flex target (sent)", title="actions; dots = new chunk")
        axes[0, column].legend(fontsize=7)
        axes[1, column].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "control_loop.png", dpi=110)
    print("\n".join(rows))


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--checkpoint", type=Path, help="a roboalign pretrained_model directory")
    args.add_argument("--smolvla-checkpoint", type=Path, help="a smolvla pretrained_model directory")
    args.add_argument("--seconds", type=float, default=15.0, help="duration of each loop")
    opts = args.parse_args()
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "?"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        roboalign, smolvla = opts.checkpoint, opts.smolvla_checkpoint
        if roboalign is None or smolvla is None:
            trained = tiny_checkpoints(work, roboalign is None, smolvla is None)
            roboalign, smolvla = roboalign or trained[0], smolvla or trained[1]
        checkpoints = {"no_model": roboalign, "roboalign": roboalign, "smolvla": smolvla}
        results = {}
        for kind, mode in LOOPS:
            for delay in DELAYS_S[:1] if kind == "no_model" else DELAYS_S:
                name = f"{kind}_{mode}_{int(delay * 1000)}ms"
                print(f"[bench_control_loop] {name} ({opts.seconds:.0f} s)", flush=True)
                results[name] = timed_rollout(kind, mode, checkpoints[kind], work, opts.seconds, delay)
    report(results, load)


if __name__ == "__main__":
    main()
