"""`roboalign demo --quick` end to end; every number in the report must come from the run's outputs."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lerobot_roboalign.demo import (
    TASKS,
    DemoConfig,
    count_successes,
    interval,
    number,
    paired_cell,
    success_cell,
)

pytestmark = pytest.mark.slow

VLA_ROWS = {
    "base": "VLA on base backbone (unaligned)",
    "sft": "VLA on RoboAlign without RL (SFT)",
    "roboalign": "VLA on RoboAlign (SFT + GRPO)",
}


def evaluated(eval_dir: Path) -> dict:
    """lerobot-eval's own record of an evaluation, counted per task (episodes in seed order)."""
    return count_successes(json.loads((eval_dir / "eval_info.json").read_text()), DemoConfig().eval_seed)


def demo_command(output: Path) -> list[str]:
    return [str(Path(sys.executable).with_name("roboalign")), "demo", "--quick", f"--output_dir={output}"]


# Where the demo is SIGKILLed (whole process group) before it is run again: one kind of stage each.
KILL_POINTS = {
    "recording": lambda d: any(p.is_dir() for p in (d / "dataset.recording").glob("*")),
    "alignment (SFT)": lambda d: (d / "stages" / "sft.started").is_file(),
    "VLA training after a checkpoint": lambda d: (d / "vla_base" / "checkpoints" / "last" / "pretrained_model"
                                                  / "train_config.json").is_file(),
    "evaluation": lambda d: (d / "stages" / "eval_base.started").is_file(),
}


def run_until(output: Path, condition, log) -> None:
    process = subprocess.Popen(demo_command(output), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 900
    while not condition(output):
        assert process.poll() is None, "the demo ended before reaching the kill point"
        assert time.monotonic() < deadline
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    """The quick demo, killed once in each kind of stage and re-run: the outputs tested below are the resumed run's."""
    output = tmp_path_factory.mktemp("demo")
    with (output.parent / "killed_runs.log").open("w") as log:
        for condition in KILL_POINTS.values():
            run_until(output, condition, log)
    result = subprocess.run(demo_command(output), capture_output=True, text=True, timeout=1500, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "[lerobot-train sft]" in result.stdout and "[lerobot-eval roboalign]" in result.stdout  # streamed, labelled
    return output


def test_killed_stages_resumed_or_restarted(demo_dir):
    log = (demo_dir.parent / "killed_runs.log").read_text()
    assert "resuming lerobot-train from" in log  # the VLA stage killed after its checkpoint went on from it
    assert not list((demo_dir / "stages").glob("*.started"))
    assert not (demo_dir / "dataset.recording").exists()
    assert json.loads((demo_dir / "stages" / "vla_base.json").read_text())["result"]["loss"]


def report_rows(report: str, header: str) -> dict[str, list[str]]:
    section = report.split(header, 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows[1:]}


def stage(demo_dir: Path, name: str) -> dict:
    return json.loads((demo_dir / "stages" / f"{name}.json").read_text())["result"]


def test_success_table_and_paired_comparison_come_from_lerobot_eval_output(demo_dir):
    report = (demo_dir / "report.md").read_text()
    rows = report_rows(report, "## Closed-loop success")
    counts = {}
    for key, label in VLA_ROWS.items():
        counts[label] = evaluated(demo_dir / f"eval_{key}")
        assert stage(demo_dir, f"eval_{key}") == counts[label]  # with each episode's reset seed
        assert rows[label][: len(TASKS)] == [success_cell(counts[label][task]) for task in TASKS]
        assert all(counts[label][task]["n_episodes"] >= 1 for task in TASKS)
    expert = stage(demo_dir, "expert")
    assert rows["scripted expert (reference)"] == [success_cell(expert[task]) for task in TASKS]
    base, sft = VLA_ROWS["base"], VLA_ROWS["sft"]
    assert rows[f"{sft} vs {base}"] == [paired_cell(counts[base][task], counts[sft][task]) for task in TASKS]


def test_success_against_steps_comes_from_evaluating_every_checkpoint(demo_dir):
    report = (demo_dir / "report.md").read_text()
    section = report.split("## Success against VLA training steps", 1)[1].split("\n## ", 1)[0]
    for key, label in VLA_ROWS.items():
        steps = sorted(int(p.name) for p in (demo_dir / f"vla_{key}" / "checkpoints").iterdir() if p.name.isdigit())
        assert len(steps) >= 2  # at least one checkpoint before the last
        outcomes = [evaluated(demo_dir / f"eval_{key}{'' if step == steps[-1] else f'_{step}'}") for step in steps]
        for task in TASKS:
            cells = [f"{o[task]['successes']}/{o[task]['n_episodes']}" for o in outcomes]
            assert f"| {label} | {task} | " + " | ".join(cells) + " |" in section


def test_probe_table_comes_from_the_probe_stage(demo_dir):
    report = (demo_dir / "report.md").read_text()
    probe = stage(demo_dir, "probe")
    rows = report_rows(report, "## What the head can read")
    assert len(probe["backbones"]) == 3 and 0 < probe["n_heldout"] < probe["n_frames"]
    for name, by_layer in probe["backbones"].items():
        layers = sorted(by_layer, key=int)
        assert rows[name] == [f"{by_layer[k]['image']:.3f} / {by_layer[k]['with_context']:.3f}" for k in layers]
    assert f"the probe reaches R^2 {probe['state_and_task']:.3f}" in report


def test_camera_off_table_comes_from_lerobot_eval_with_a_grey_camera(demo_dir):
    rows = report_rows((demo_dir / "report.md").read_text(), "## Does the VLA use the camera?")
    for key, label in VLA_ROWS.items():
        on, off = evaluated(demo_dir / f"eval_{key}"), evaluated(demo_dir / f"eval_{key}_camera_off")
        assert json.loads((demo_dir / "stages" / f"eval_{key}_camera_off.json").read_text())["settings"]["camera_off"]
        assert rows[label] == [
            f"{on[t]['successes']}/{on[t]['n_episodes']} / {off[t]['successes']}/{off[t]['n_episodes']} "
            f"({paired_cell(off[t], on[t])})"
            for t in TASKS
        ]


def test_cube_probe_table_comes_from_the_cube_probe_stage(demo_dir):
    report = (demo_dir / "report.md").read_text()
    cube = stage(demo_dir, "cube_probe")
    rows = report_rows(report, "## Is the cube in the image tokens?")
    assert len(cube["backbones"]) == 3 and len(cube["train_sizes"]) == 2
    for name, by_size in cube["backbones"].items():
        assert rows[name] == [f"{by_size[n]:.3f}" for n in sorted(by_size, key=int)]
    assert f"gives R^2 {next(iter(cube['camera_off'].values())):.3f}" in report


def test_alignment_table_comes_from_the_score_stage_on_heldout_episodes(demo_dir):
    report = (demo_dir / "report.md").read_text()
    scores = stage(demo_dir, "score")
    rows = report_rows(report, "## Alignment of each backbone")
    for name, s in scores["models"].items():
        assert rows[name] == [number(s["format"]), number(s["action"]), number(s["l1"]), number(s["l1_all"]),
                              number(s["decode_rate"], 2), number(s["reasoning_tokens"], 1)]  # fmt: skip
        assert len(s["per_frame_action"]) == len(s["per_frame_l1_all"]) == scores["n_frames"]
        versus = scores["versus_blind"][name]
        line = f"- {name}: prefix accuracy minus the most frequent sequence's {interval(versus['action'])}; mean " \
               f"chunk's L1 minus the model's: all frames {interval(versus['l1_all'])}, "
        assert line in report
        decoded = [i for i, e in enumerate(s["per_frame_l1"]) if e is not None]
        if decoded:  # the decoded-frames comparison is over exactly the frames whose span decodes
            assert versus["l1_decoded"]["n"] == len(decoded)
            assert f"{interval(versus['l1_decoded'])} on the {len(decoded)} frames it decodes" in report
    for name, s in scores["baselines"].items():
        assert rows[name][1:4] == [number(s["action"]), number(s["l1"]), number(s["l1_all"])]
    d = scores["grpo_minus_sft_action"]
    assert f"{d['mean']:+.3f} (95% bootstrap interval [{d['low']:+.3f}, {d['high']:+.3f}])" in report
    assert not set(scores["heldout_episodes"]) & set(scores["train_episodes"])  # truly held out
    for s in scores["baselines"].values():  # every held-out frame compared, its phrasing seen in training or not
        assert None not in s["per_frame_l1"]
    assert "nan" not in report


def test_completion_caps_hold_the_longest_target_completion(demo_dir):
    """Recount the longest target (reasoning + markup + FAST span) over every frame, independently."""
    from transformers import AutoTokenizer

    from lerobot_roboalign.action_vocab import ActionVocabulary
    from lerobot_roboalign.align.data import AlignDataConfig, answer_text, load_samples
    from lerobot_roboalign.fast import FastTokenizer

    model = demo_dir / "align_sft" / "model"
    tokenizer, vocabulary = AutoTokenizer.from_pretrained(model), ActionVocabulary.from_pretrained(model)
    samples = load_samples(
        AlignDataConfig(repo_ids=["local/so101_alignment"], roots=[str(demo_dir / "alignment_corpus")], chunk_size=16),
        FastTokenizer.from_pretrained(demo_dir / "fast_tokenizer"),
    )
    reasoning = {json.loads(line)["id"]: json.loads(line)["reasoning"] for line in (demo_dir / "reasoning.jsonl").open()}
    texts = [answer_text(reasoning[s["id"]], vocabulary.format_span(s["fast_tokens"])) for s in samples]
    longest = max(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
    assert stage(demo_dir, "score")["cap"] > longest
    assert stage(demo_dir, "grpo")["cap"] > longest
    assert f"Completion cap: {stage(demo_dir, 'score')['cap']} tokens" in (demo_dir / "report.md").read_text()


def test_alignment_corpus_and_vla_demonstrations_are_separate_recordings(demo_dir):
    from lerobot_roboalign.envs.variation import ALIGNMENT_SEED_BASE
    from lerobot_roboalign.sim_demos import instructions

    corpus, demos = stage(demo_dir, "record_corpus"), stage(demo_dir, "record")
    for task in TASKS:
        assert demos["tasks"][task]["instructions"] == instructions(task)  # the target tasks' own wording
        assert corpus["tasks"][task]["instructions"] and not set(instructions(task)) & set(corpus["tasks"][task]["instructions"])
    assert corpus["settings"]["variation"]["colours"] > 1 and corpus["settings"]["seed_base"] == ALIGNMENT_SEED_BASE
    fmt = json.loads((demo_dir / "align_grpo" / "model" / "roboalign_format.json").read_text())
    assert not fmt["include_state"]  # the VLA's prompt leaves {state} empty: one prompt for both


def test_wall_times_plots_and_outputs(demo_dir):
    report = (demo_dir / "report.md").read_text()
    walls = report_rows(report, "## Wall time per stage")
    for name, (seconds,) in walls.items():
        assert seconds == f"{json.loads((demo_dir / 'stages' / f'{name}.json').read_text())['wall_s']:.0f}"
    assert {"record", "record_corpus", "sft", "grpo", "score", "probe", "cube_probe", *(f"vla_{k}" for k in VLA_ROWS),
            *(f"eval_{k}" for k in VLA_ROWS), *(f"eval_{k}_camera_off" for k in VLA_ROWS)} <= set(walls)
    for name in ("success.png", "success_vs_steps.png", "learning_curves.png"):
        assert (demo_dir / name).stat().st_size > 1000
    assert re.search(r"Elapsed: [0-9.]+ min for this invocation", report)


def test_rerun_reuses_stages_made_with_the_same_settings(demo_dir):
    before = {p.name: p.stat().st_mtime for p in (demo_dir / "stages").glob("*.json")}
    subprocess.run(demo_command(demo_dir), capture_output=True, text=True, timeout=600, check=True)
    after = {p.name: p.stat().st_mtime for p in (demo_dir / "stages").glob("*.json")}
    assert before == after
