"""`roboalign demo --quick` end to end; every number in the report must come from the run's outputs."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lerobot_roboalign.demo import TASKS, count_successes, wilson_interval

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("demo")
    command = [str(Path(sys.executable).with_name("roboalign")), "demo", "--quick", f"--output_dir={output}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1500, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return output


def report_rows(report: str, header: str) -> dict[str, list[str]]:
    section = report.split(header, 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows[1:]}


def test_success_table_counts_episodes_from_lerobot_eval_output(demo_dir):
    report = (demo_dir / "report.md").read_text()
    rows = report_rows(report, "## Closed-loop success")
    for key, label in (("sft", "VLA on RoboAlign without RL (SFT)"), ("roboalign", "VLA on RoboAlign (SFT + GRPO)")):
        counts = count_successes(json.loads((demo_dir / f"eval_{key}" / "eval_info.json").read_text()))
        for task, cell in zip(TASKS, rows[label], strict=True):
            n, k = counts[task]["n_episodes"], counts[task]["successes"]
            assert n >= 1
            low, high = wilson_interval(k, n)
            assert cell == f"{k}/{n} = {100 * k / n:.0f}% [{100 * low:.0f}, {100 * high:.0f}]"
    expert = json.loads((demo_dir / "stages" / "expert.json").read_text())["result"]
    assert rows["scripted expert (reference)"][0].startswith(f"{expert[TASKS[0]]['successes']}/")


def test_alignment_scores_and_wall_times_come_from_stage_records(demo_dir):
    report = (demo_dir / "report.md").read_text()
    scores = json.loads((demo_dir / "stages" / "score.json").read_text())["result"]
    rows = report_rows(report, "## Alignment of each backbone")
    assert set(rows) == set(scores)
    for name, score in scores.items():
        assert rows[name] == [f"{score['format']:.3f}", f"{score['action']:.3f}", f"{score['reward']:.3f}"]
    walls = report_rows(report, "## Wall time per stage")
    for stage, (seconds,) in walls.items():
        recorded = json.loads((demo_dir / "stages" / f"{stage}.json").read_text())["wall_s"]
        assert seconds == f"{recorded:.0f}"
    assert {"record", "sft", "grpo", "vla_sft", "vla_roboalign", "eval_sft", "eval_roboalign"} <= set(walls)


def test_plots_and_pipeline_outputs_exist(demo_dir):
    for name in ("success.png", "grpo_reward.png"):
        assert (demo_dir / name).stat().st_size > 1000
    for model in ("align_sft/model", "align_grpo/model"):
        assert (demo_dir / model / "config.json").is_file() and (demo_dir / model / "fast_tokenizer").is_dir()
    assert re.search(r"Total: [0-9.]+ min", (demo_dir / "report.md").read_text())


def test_rerun_skips_completed_stages(demo_dir):
    before = {p.name: p.stat().st_mtime for p in (demo_dir / "stages").glob("*.json")}
    command = [str(Path(sys.executable).with_name("roboalign")), "demo", "--quick", f"--output_dir={demo_dir}"]
    subprocess.run(command, capture_output=True, text=True, timeout=600, check=True)
    after = {p.name: p.stat().st_mtime for p in (demo_dir / "stages").glob("*.json")}
    assert before == after
