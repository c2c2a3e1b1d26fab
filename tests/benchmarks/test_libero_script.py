"""``examples/libero/eval_all_suites.sh`` passes the standard protocol to lerobot-eval (recorded by a stand-in)."""

import os
import stat
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "libero" / "eval_all_suites.sh"


def test_all_suites_use_the_standard_limits_and_256_cameras(tmp_path):
    log = tmp_path / "calls.txt"
    for name in ("lerobot-eval", "python"):  # record lerobot-eval's arguments; skip the aggregation
        stub = tmp_path / name
        stub.write_text(f'#!/usr/bin/env bash\necho "{name} $*" >> {log}\n')
        stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(["bash", str(SCRIPT), "ckpt/pretrained_model", str(tmp_path / "out")], env=env, check=True)
    calls = [line.split() for line in log.read_text().splitlines() if line.startswith("lerobot-eval")]
    limits = {"libero_spatial": "220", "libero_object": "280", "libero_goal": "300", "libero_10": "520"}
    assert len(calls) == 4
    for args in calls:
        suite = next(a.split("=", 1)[1] for a in args if a.startswith("--env.task="))
        assert f"--env.episode_length={limits[suite]}" in args
        assert "--env.observation_height=256" in args and "--env.observation_width=256" in args
        assert "--eval.n_episodes=50" in args and "--policy.path=ckpt/pretrained_model" in args
