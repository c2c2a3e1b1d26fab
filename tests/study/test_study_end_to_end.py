"""`roboalign study` end to end at its smallest: the base row on the random base, one head seed.

The real chain for that row (sim record of the VLA and probe demonstrations, the tiny backbone, the prompt check,
lerobot-train with the feature cache, lerobot-eval keyed by seed, the probe curve, the report), then a rerun that
reuses every stage. The alignment stages (SFT, GRPO, matched SFT, scores, scene questions) are the demo's stage
functions, tested with the demo; here their orchestration is tested with stand-ins (test_study_plan.py).
"""

import json
import os
import subprocess
import sys

import pytest

ARGS = ["--tiny", "--base=random", "--rows=[base]", "--head_seeds=[0]", "--sizes.vqa_ratio=0",
        "--sizes.eval_episodes_per_task=1", "--sizes.probe_demos=[1]", "--workers=2"]  # fmt: skip


def study(output_dir) -> str:
    command = [sys.executable, "-m", "lerobot_roboalign.cli", "study", *ARGS, f"--output_dir={output_dir}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_base_row_runs_end_to_end_and_a_rerun_reuses_every_stage(tmp_path):
    first = study(tmp_path)
    assert "expected time per stage" in first and "done, reused" not in first
    results = json.loads((tmp_path / "study" / "results.json").read_text())
    base = results["statistics"]["rows"]["base"]
    assert [seed["n"] for seed in base["per_seed"]] == [2]  # 1 episode x 2 tasks
    evaluation = json.loads((tmp_path / "stages" / "eval_base_s0.json").read_text())["result"]
    assert {task: list(by_seed) for task, by_seed in evaluation.items()} == {
        "reach_and_close": ["20000"], "pick_and_place": ["20000"]}  # fmt: skip
    assert any((tmp_path / "feature_cache").iterdir())  # the head read its frozen backbone through the cache
    assert (tmp_path / "study" / "probe.png").is_file() and "Sample-efficiency probe" in first
    second = study(tmp_path)
    stages = len(results["plan"])
    assert second.count("done, reused") == stages and "=== roboalign study:" not in second
