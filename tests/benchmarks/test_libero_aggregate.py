"""examples/libero/aggregate.py turns lerobot-eval's eval_info.json files into the suite table."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[2] / "examples" / "libero" / "aggregate.py"
SUCCESS = {"libero_spatial": 90.0, "libero_object": 80.0, "libero_goal": 70.0, "libero_10": 60.0}


def write_run(root: Path, suite: str, success: float, episodes: int = 500) -> Path:
    run = root / suite
    run.mkdir(parents=True)
    group = {"avg_sum_reward": 0.0, "pc_success": success, "n_episodes": episodes, "video_paths": []}
    (run / "eval_info.json").write_text(
        json.dumps({"per_task": [], "per_group": {suite: group}, "overall": group})
    )
    return run


def run_script(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)], check=False, capture_output=True, text=True
    )


def test_four_suites_give_the_average_and_the_plot(tmp_path):
    runs = [write_run(tmp_path, suite, success) for suite, success in SUCCESS.items()]
    result = run_script(*runs, "--output_dir", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "out" / "libero_results.json").read_text())
    assert summary["row"] == {"Spatial": 90.0, "Object": 80.0, "Goal": 70.0, "Long": 60.0, "Avg": 75.0}
    assert summary["missing_suites"] == [] and summary["non_standard_episode_counts"] == {}
    table = (tmp_path / "out" / "libero_results.md").read_text()
    assert "| this run | 90.0 | 80.0 | 70.0 | 60.0 | 75.0 |" in table
    assert "| RoboAlign (Qwen2.5-VL-7B) (paper) | 93.8 | 96.0 | 87.2 | 70.0 | 86.8 |" in table
    assert (tmp_path / "out" / "libero_results.png").stat().st_size > 1000


def test_partial_runs_are_flagged_not_averaged(tmp_path):
    run = write_run(tmp_path, "libero_spatial", 50.0, episodes=10)
    assert run_script(run, "--output_dir", tmp_path / "out").returncode == 0
    summary = json.loads((tmp_path / "out" / "libero_results.json").read_text())
    assert "Avg" not in summary["row"]
    assert summary["missing_suites"] == ["libero_object", "libero_goal", "libero_10"]
    assert summary["non_standard_episode_counts"] == {"libero_spatial": 10}


def test_missing_run_is_a_clear_error(tmp_path):
    result = run_script(tmp_path / "nope", "--output_dir", tmp_path / "out")
    assert result.returncode != 0 and "finished lerobot-eval run" in result.stderr
