"""Stage bookkeeping of `roboalign demo`: reuse only with the same settings, never resume other settings' outputs."""

import json

from lerobot_roboalign.demo import QUICK, TASKS, DemoConfig, DemoSizes, Stages, report_header


def test_finished_stage_is_reused_only_with_the_same_settings(tmp_path):
    calls = []
    work = lambda: calls.append(1) or {"n": len(calls)}  # noqa: E731
    assert Stages(tmp_path).run("train", work, {"steps": 30}) == {"n": 1}
    assert Stages(tmp_path).run("train", work, {"steps": 30}) == {"n": 1}  # reused
    assert Stages(tmp_path).run("train", work, {"steps": 600}) == {"n": 2}  # quick -> full: redone
    record = json.loads((tmp_path / "stages" / "train.json").read_text())
    assert record["settings"] == {"steps": 600} and not (tmp_path / "stages" / "train.started").exists()


def test_a_changed_input_redoes_the_stages_after_it(tmp_path):
    calls = []
    for settings in ({"episodes": 4}, {"episodes": 4}, {"episodes": 30}):
        stages = Stages(tmp_path)
        stages.run("record", lambda: {}, settings)
        stages.run("sft", lambda: calls.append(1) or {}, {"steps": 30}, after=("record",))
    assert len(calls) == 2


def test_killed_stage_keeps_its_outputs_to_resume_but_not_another_configurations(tmp_path):
    output = tmp_path / "vla"

    def killed():
        output.mkdir(exist_ok=True)
        (output / "checkpoint").write_text("step 10")
        raise KeyboardInterrupt  # stands in for SIGKILL: no stage record is written

    for _ in range(2):
        try:
            Stages(tmp_path).run("vla", killed, {"steps": 20}, outputs=(output,))
        except KeyboardInterrupt:
            pass
    seen = []
    Stages(tmp_path).run("vla", lambda: seen.append(output.exists()) or {}, {"steps": 20}, outputs=(output,))
    assert seen == [True]  # same settings: the checkpoint is there to resume from
    (output).mkdir(exist_ok=True)
    (tmp_path / "stages" / "vla.json").unlink()
    (tmp_path / "stages" / "vla.started").write_text("another fingerprint")
    Stages(tmp_path).run("vla", lambda: seen.append(output.exists()) or {}, {"steps": 3000}, outputs=(output,))
    assert seen == [True, False]  # other settings: deleted before the stage starts


def test_quick_sizes_differ_from_full_so_fingerprints_differ():
    assert DemoConfig(quick=True).sizes == QUICK != DemoSizes()


def test_decoded_l1_is_compared_on_the_frames_that_decode_only():
    from lerobot_roboalign.demo import paired_on_decoded

    paired = paired_on_decoded([None, 0.1, 0.4], [9.0, 0.3, 0.2], seed=0)
    assert paired["n"] == 2 and paired["better"] == 1 and paired["worse"] == 1
    assert abs(paired["mean"] - 0.0) < 1e-12  # (0.3 - 0.1 + 0.2 - 0.4) / 2; the undecoded frame's 9.0 is left out
    assert paired_on_decoded([None, None], [0.3, 0.2], seed=0) is None


def test_quick_report_says_first_that_it_checks_the_plumbing_not_the_method():
    quick, full = report_header(DemoConfig(quick=True)), report_header(DemoConfig())
    assert "every stage runs" in quick[2] and "says nothing about the method" in quick[2]
    assert not any("every stage runs" in line for line in full) and full[2].startswith("Mode: full")


def test_evaluation_outcomes_carry_the_episode_seeds_that_pair_them():
    from lerobot_roboalign.demo.stages import by_seed, count_successes

    info = {"per_task": [{"task_group": "pick_and_place", "metrics": {"successes": [True, False, True]}},
                         {"task_group": "reach_and_close", "metrics": {"successes": [False, True, True]}}]}  # fmt: skip
    counts = count_successes(info, start_seed=20000)
    assert counts["pick_and_place"]["successes"] == 2 and counts["reach_and_close"]["n_episodes"] == 3
    assert by_seed(counts["pick_and_place"]) == {20000: True, 20001: False, 20002: True}
    assert by_seed(counts["reach_and_close"]) == {20000: False, 20001: True, 20002: True}


def test_alignment_arguments_name_the_state_entries_only_with_the_state_in_the_prompt(tmp_path):
    from lerobot_roboalign.demo.stages import AlignData

    with_state = AlignData(tmp_path / "corpus", include_state=True, state_names=("ee_x", "gripper_pose"))
    assert "--dataset.state_names=[ee_x,gripper_pose]" in with_state.args("train")
    assert f"--dataset.roots=[{tmp_path / 'corpus'}]" in with_state.args()
    without = AlignData(tmp_path / "corpus", include_state=False, state_names=("ee_x",))
    assert not any(arg.startswith("--dataset.state_names") for arg in without.args("train"))
    assert without.config(split="heldout").state_names == []  # AlignDataConfig would refuse names without state


def test_alignment_reads_the_varied_corpus_and_the_heads_the_vla_demonstrations(tmp_path, monkeypatch):
    """The demo's wiring, with every stage replaced by a recorder: which recording each stage is given."""
    from lerobot_roboalign.demo import pipeline, stages
    from lerobot_roboalign.envs.variation import ALIGNMENT_VARIATION

    calls: dict[str, list] = {}

    def fake(name: str, result: dict):
        return lambda *args, **kwargs: calls.setdefault(name, []).append((args, kwargs)) or result

    counts = {task: {"n_episodes": 1, "successes": 0, "episodes": [False], "seeds": [1000]} for task in TASKS}
    for name, result in {
        "record_demos": {}, "make_backbone": {"path": "base"}, "fit_tokenizer": {"path": "fast"},
        "write_reasoning": {"path": "reasoning"}, "align_sft": {"path": "sft", "metrics": "none.csv"},
        "align_grpo": {"path": "grpo", "metrics": "none.csv"}, "train_vla": {"loss": []}, "eval_vla": counts,
        "eval_expert": counts, "score_alignment": {}, "probe_actions": {}, "probe_cube": {},
    }.items():  # fmt: skip
        monkeypatch.setattr(stages, name, fake(name, result))
    for name in ("plot_success", "plot_success_curves", "plot_curves", "format_report"):
        monkeypatch.setattr(pipeline, name, lambda *args, **kwargs: "")
    out = tmp_path / "demo"
    pipeline.run(DemoConfig(output_dir=out, quick=True, cpu_threads=0))

    (vla_demos, _), (corpus, corpus_options) = calls["record_demos"]
    assert vla_demos[0] == out / "dataset" and corpus[0] == out / "alignment_corpus"
    assert corpus_options == {"variation": ALIGNMENT_VARIATION}  # seeds from the corpus's own block
    for name in ("fit_tokenizer", "write_reasoning", "align_sft", "align_grpo", "score_alignment"):
        (data, *_), _ = calls[name][0]
        assert data.root == out / "alignment_corpus" and not data.include_state, name
    assert sorted(args[0] for args, _ in calls["train_vla"]) == [out / "dataset"] * 3
    assert calls["probe_actions"][0][0][0].root == out / "dataset"  # what the head reads
