"""Control-loop timing of ``lerobot-rollout`` driving a virtual SO-101 with a tiny RoboAlign checkpoint.

LeRobot's rollout, robot, Feetech bus and SDK run unchanged over a virtual serial port
(tests/robots/roboalign_virtual_hw.py), so the numbers are the loop's own cost plus inference
on this machine. Reports achieved rate, period jitter (p50/p99), and the share of steps that
waited for inference (the steps where the policy ran a new chunk), side by side with the
same loop driven without a model (the peer: bus + cameras + LeRobot overhead only).

    python benchmarks/bench_control_loop.py [--checkpoint=PATH] [--seconds=20]

Without --checkpoint, a tiny checkpoint is trained first with lerobot-train (a few minutes).
Writes benchmarks/results/control_loop.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
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


def tiny_checkpoint(work: Path) -> Path:
    """Train a tiny RoboAlign checkpoint the way the tests do (synthetic data, tiny Qwen2.5-VL)."""
    from lerobot_roboalign.runner import run_lerobot, train_args
    from lerobot_roboalign.synthetic import write_synthetic_dataset
    from lerobot_roboalign.tiny_backbone import make_tiny_backbone

    dataset = write_synthetic_dataset(work / "dataset")
    backbone = make_tiny_backbone(work / "backbone", "qwen2_5_vl")
    run_lerobot("lerobot-train", train_args(work / "dataset", dataset.repo_id, backbone, work / "train", 2))
    return work / "train" / "checkpoints" / "last" / "pretrained_model"


def timed_rollout(checkpoint: Path, work: Path, seconds: float, with_policy: bool) -> dict:
    """Run lerobot-rollout over the virtual arm; time every control step via the robot's send_action."""
    import roboalign_virtual_hw as hw
    from conftest import FOLLOWER_PORT, virtualize
    from lerobot.robots.so_follower import SOFollower
    from lerobot.scripts.lerobot_rollout import main

    from lerobot_roboalign.calibration import main_check
    from lerobot_roboalign.modeling_roboalign import RoboAlignPolicy

    bound = work / f"ckpt_{with_policy}"
    shutil.copytree(checkpoint, bound, dirs_exist_ok=True)
    main_check([str(ROOT / "calibration/so101_follower.json"), "--robot.type=so101_follower", f"--checkpoint={bound}"])
    features = json.loads((bound / "config.json").read_text())["input_features"]
    cameras = {k.rsplit(".", 1)[-1]: tuple(v["shape"][1:]) for k, v in features.items() if v["type"] == "VISUAL"}
    config = virtualize(ROOT / "robots/so101/rollout.yaml", work / f"cfg_{with_policy}", cameras)

    stamps, inference = [], []
    send, predict = SOFollower.send_action, RoboAlignPolicy.predict_action_chunk

    def timed_send(self, action):
        stamps.append(time.perf_counter())
        return send(self, action)

    def timed_predict(self, batch, **kwargs):
        inference.append(len(stamps))
        if with_policy:
            return predict(self, batch, **kwargs)
        import torch  # the peer: a constant chunk, no model cost

        return torch.zeros(1, self.config.chunk_size, self.config.action_feature.shape[0])

    SOFollower.send_action, RoboAlignPolicy.predict_action_chunk = timed_send, timed_predict
    arm = hw.VirtualArm.from_file("so101_follower", ROOT / "calibration/so101_follower.json")
    sys.argv = ["lerobot-rollout", f"--config_path={config}", f"--policy.path={bound}", "--device=cpu",
                f"--duration={seconds}", "--return_to_initial_position=false"]  # fmt: skip
    try:
        with hw.virtual_ports({FOLLOWER_PORT: arm}):
            main()
    finally:
        SOFollower.send_action, RoboAlignPolicy.predict_action_chunk = send, predict
    periods = np.diff(stamps[5:]) * 1e3  # skip the first chunk (cold caches)
    waited = sum(1 for i in inference if i >= 5)
    return {
        "steps": len(stamps),
        "achieved_hz": float(1e3 / periods.mean()),
        "period_p50_ms": float(np.percentile(periods, 50)),
        "period_p99_ms": float(np.percentile(periods, 99)),
        "period_max_ms": float(periods.max()),
        "share_waited_for_inference": waited / max(len(periods), 1),
        "periods_ms": periods.tolist(),
    }


def report(results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    RESULTS.mkdir(parents=True, exist_ok=True)
    policy, peer = results["roboalign_tiny"], results["no_model_peer"]
    ratios = {"achieved_hz": policy["achieved_hz"] / peer["achieved_hz"],
              "period_p99_ms": policy["period_p99_ms"] / peer["period_p99_ms"]}  # fmt: skip
    summary = {name: {k: v for k, v in r.items() if k != "periods_ms"} for name, r in results.items()}
    summary["ratio_roboalign_over_peer"] = ratios
    summary["target_hz"] = FPS
    (RESULTS / "control_loop.json").write_text(json.dumps(summary, indent=2))
    rows = ["| loop | steps | achieved Hz | p50 period ms | p99 period ms | max ms | share waited for inference |",
            "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, r in summary.items():
        if name.startswith(("roboalign", "no_model")):
            rows.append(f"| {name} | {r['steps']} | {r['achieved_hz']:.1f} | {r['period_p50_ms']:.1f} | "
                        f"{r['period_p99_ms']:.1f} | {r['period_max_ms']:.1f} | {r['share_waited_for_inference']:.1%} |")  # fmt: skip
    rows.append(f"\nRatio roboalign / peer: rate {ratios['achieved_hz']:.2f}x, p99 period {ratios['period_p99_ms']:.2f}x "
                f"(target {FPS} Hz = {1e3 / FPS:.1f} ms).")  # fmt: skip
    (RESULTS / "control_loop.md").write_text("# Control loop, virtual SO-101, lerobot-rollout, CPU\n\n" + "\n".join(rows) + "\n")
    fig, ax = plt.subplots(figsize=(8, 4))
    for name, r in results.items():
        ax.plot(r["periods_ms"], label=f"{name} ({r['achieved_hz']:.1f} Hz)", lw=0.8)
    ax.axhline(1e3 / FPS, color="k", ls="--", lw=0.8, label=f"{FPS} Hz target")
    ax.set(xlabel="control step", ylabel="period (ms)", yscale="log", title="lerobot-rollout control period")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "control_loop.png", dpi=120)
    print("\n".join(rows))


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--checkpoint", type=Path)
    args.add_argument("--seconds", type=float, default=20.0)
    opts = args.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        checkpoint = opts.checkpoint or tiny_checkpoint(work)
        results = {
            "roboalign_tiny": timed_rollout(checkpoint, work, opts.seconds, with_policy=True),
            "no_model_peer": timed_rollout(checkpoint, work, opts.seconds, with_policy=False),
        }
    report(results)


if __name__ == "__main__":
    main()
