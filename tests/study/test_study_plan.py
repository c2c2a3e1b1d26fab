"""`roboalign study`: its config, its stage plan and the resumability of the orchestration (cheap stand-ins)."""

import json
import threading
import time

import pytest

from lerobot_roboalign.study.config import TINY, StudyConfig, parse_config
from lerobot_roboalign.study.pipeline import run
from lerobot_roboalign.study.plan import (
    DEFAULT_RATES,
    OVERHEAD_S,
    calibrate,
    cost_rates,
    estimate_lines,
    needed_for,
    stage_plan,
)


def test_pilot_switches_every_seed_range_and_tiny_keeps_given_sizes():
    final, pilot = parse_config([]), parse_config(["--pilot", "--tiny", "--sizes.head_steps=7"])
    assert (final.eval_seed, final.seeds("vla"), final.seeds("alignment")) == (
        20_000,
        (10**7, 0),
        (3 * 10**7, 0),
    )
    assert pilot.eval_seed == 30_000
    pilot_seeds = [pilot.seeds(corpus) for corpus in ("vla", "probe", "alignment", "vqa")]
    assert {base for base, _ in pilot_seeds} == {4 * 10**7} and len(set(pilot_seeds)) == 4  # disjoint blocks
    assert pilot.sizes.head_steps == 7 and pilot.sizes.sft_steps == TINY.sft_steps


@pytest.mark.parametrize(
    "args, message",
    [(["--base=clip"], "random, vqa"), (["--rows=[base,rl]"], "rows are among"), (["--head_seeds=[1,1]"], "distinct"),
     (["--grpo_budget=0"], "positive")],
)  # fmt: skip
def test_bad_settings_name_the_fix(args, message):
    with pytest.raises(ValueError, match=message):
        parse_config(args)


def test_plan_covers_rows_and_head_seeds_after_their_inputs():
    cfg = parse_config(["--base=random"])
    plan = stage_plan(cfg)
    names = [stage.name for stage in plan]
    assert len(set(names)) == len(names)
    for i, stage in enumerate(plan):
        assert set(stage.after) <= set(names[:i]), stage.name
    assert sum(stage.kind == "eval" for stage in plan) == 4 * 4  # 4 rows x 4 head seeds
    assert "vqa_base" not in names and "vqa_score" not in names
    vqa_plan = {s.name: s for s in stage_plan(StudyConfig(base="vqa"))}
    assert {"vqa_base", "vqa_heldout"} <= set(vqa_plan)  # held-out questions score every row's backbone
    assert {"backbone", "vqa_base", "sft", "grpo", "matched_sft", "vqa_heldout"} <= set(vqa_plan["vqa_score"].after)
    assert vqa_plan["vqa_heldout"].settings["seeds"] != vqa_plan["vqa_data"].settings["seeds"]
    head = next(stage for stage in plan if stage.name == "head_matched_sft_s3")
    assert head.after[0] == "matched_sft" and "prompt_check_matched_sft" in head.after
    check = next(stage for stage in plan if stage.name == "prompt_check_matched_sft")
    assert check.settings["rows"] == ["base", "matched_sft"]  # against its own alignment and the first row's
    ancestors = {stage.name for stage in needed_for(plan, ["head_base_s0"])}
    assert ancestors.isdisjoint({"sft", "grpo", "matched_sft"})  # base heads run beside the alignment
    grpo, matched = (next(s for s in plan if s.name == n) for n in ("grpo", "matched_sft"))
    assert grpo.settings == matched.settings and grpo.units == matched.units  # same prompts, as many samples
    assert [s.name for s in stage_plan(StudyConfig(rows=["base", "sft"]))].count("grpo") == 0
    base_only = [s.name for s in stage_plan(StudyConfig(base="random", rows=["base"], head_seeds=[0, 1]))]
    assert "eval_base_s1" in base_only  # pilot P2: nothing to align, no alignment corpus on the random base
    assert not {"sft", "score", "record_alignment", "tokenizer", "vqa_data"} & set(base_only)
    assert {"record_alignment", "tokenizer"} <= {
        s.name for s in stage_plan(StudyConfig(rows=["base"]))
    }  # VQA base


def test_only_runs_a_stage_and_its_inputs():
    names = [stage.name for stage in stage_plan(StudyConfig(base="random", only="score"))]
    assert names[-1] == "score" and {"grpo", "matched_sft", "record_vla"} <= set(names)
    assert not any(name.startswith(("head_", "eval_", "probe")) for name in names)
    with pytest.raises(ValueError, match="--only=scores: no such stage"):
        stage_plan(StudyConfig(only="scores"))


def test_grpo_budget_multiplies_steps_and_prompts():
    plan = {s.name: s for s in stage_plan(StudyConfig(grpo_budget=4))}
    assert plan["grpo"].settings["steps"] == 256 and plan["grpo"].settings["samples"] == 256


def test_estimate_counts_only_stages_left_to_run():
    plan = stage_plan(StudyConfig(rows=["base"], head_seeds=[0]))
    full = estimate_lines(plan, DEFAULT_RATES, set(), 2)
    rest = estimate_lines(plan, DEFAULT_RATES, {s.name for s in plan[:-1]}, 2)
    assert "done, reused" not in "\n".join(full) and "\n".join(rest).count("done, reused") == len(plan) - 1


def test_calibration_learns_rates_from_stages_longer_than_their_start_up(tmp_path):
    plan = stage_plan(StudyConfig(rows=["base"], head_seeds=[0]))
    head = next(stage for stage in plan if stage.kind == "head")
    calibrate(tmp_path, plan, {head.name: OVERHEAD_S["head"] + head.units * 0.5, "record_vla": 1.0})
    rates = cost_rates(tmp_path)  # what the next run's estimate uses
    assert rates["head"] == pytest.approx(0.5) and rates["record"] == DEFAULT_RATES["record"]


class Interrupted(Exception):
    pass


def cheap_works(calls: list[str], fail: str | None = None) -> dict:
    """Stand-ins for every kind of stage: record the call, fail on ``fail``, return the inputs' names."""

    def work(cfg, stage, inputs):
        calls.append(stage.name)
        if stage.name == fail:
            raise Interrupted(stage.name)
        return {"stage": stage.name, "inputs": sorted(inputs)}

    return {kind: work for kind in DEFAULT_RATES}


def test_an_interrupted_study_resumes_after_its_finished_stages(tmp_path, capsys):
    cfg = StudyConfig(output_dir=tmp_path, tiny=True, rows=["base", "sft"], head_seeds=[0, 1], workers=1)
    plan = [stage.name for stage in stage_plan(cfg)]
    first: list[str] = []
    with pytest.raises(Interrupted):
        run(cfg, cheap_works(first, fail="sft"), report=lambda *args: tmp_path)
    assert "sft" in first and not any(name.startswith("head_sft") for name in first)  # its inputs failed
    second: list[str] = []
    reports = []
    run(cfg, cheap_works(second), report=lambda cfg, plan, results, walls, elapsed: reports.append(results))
    finished_first = set(first) - {"sft"}
    assert not finished_first & set(second)  # nothing finished before the interruption runs again
    assert set(second) == set(plan) - finished_first
    assert reports[0]["head_sft_s1"]["inputs"] == ["prompt_check_sft", "record_vla", "sft"]
    assert "done, reused" in capsys.readouterr().out
    third: list[str] = []
    run(cfg, cheap_works(third), report=lambda *args: tmp_path)
    assert third == []
    rates = json.loads((tmp_path / "cost_model.json").read_text())
    assert set(rates) == set(DEFAULT_RATES)
    changed = StudyConfig(output_dir=tmp_path, tiny=True, rows=["base", "sft"], head_seeds=[0, 1], workers=1)
    changed.sizes.head_steps += 1
    fourth: list[str] = []
    run(changed, cheap_works(fourth), report=lambda *args: tmp_path)
    assert sorted(fourth) == sorted(
        n for n in plan if n.startswith(("head_", "eval_"))
    )  # only what depends on it


def test_matched_sft_trains_on_grpo_prompts_for_as_many_samples(tmp_path, monkeypatch):
    """The matched SFT reads the alignment data with GRPO's --dataset.* flags (the same draw of prompts) and
    trains steps x batch = GRPO's steps x completions per step."""
    import lerobot_roboalign.demo.stages as demo_stages
    from lerobot_roboalign.study import stages

    calls = {}

    def fake_roboalign(argv):
        calls[argv[1]] = argv
        output = next(a.split("=", 1)[1] for a in argv if a.startswith("--training.output_dir="))
        (tmp_path / output).mkdir(parents=True, exist_ok=True)
        (tmp_path / output / "completion_cap.json").write_text('{"cap": 40, "longest_target": 24}')

    monkeypatch.setattr(demo_stages, "roboalign", fake_roboalign)
    monkeypatch.setattr(stages, "drawn_prompts", lambda cfg, samples: [f"frame {i}" for i in range(samples)])
    monkeypatch.chdir(tmp_path)
    cfg = StudyConfig(output_dir=tmp_path / "out", grpo_budget=2)
    plan = {stage.name: stage for stage in stage_plan(cfg)}
    inputs = {"sft": {"path": "sft"}, "reason": {"path": "r.jsonl"}, "tokenizer": {"path": "fast"}}
    stages.grpo(cfg, plan["grpo"], inputs)
    stages.matched_sft(cfg, plan["matched_sft"], inputs)

    def flags(argv):
        parsed = dict(a.removeprefix("--").split("=", 1) for a in argv if a.startswith("--"))
        return parsed, {k: v for k, v in parsed.items() if k.startswith("dataset.")}

    (grpo, grpo_data), (sft, sft_data) = flags(calls["grpo"]), flags(calls["sft"])
    assert grpo_data == sft_data and sft_data["dataset.num_samples"] == "128"
    grpo_completions = int(grpo["training.max_steps"]) * int(grpo["training.per_device_train_batch_size"])
    assert (
        int(sft["training.max_steps"]) * int(sft["training.per_device_train_batch_size"]) == grpo_completions
    )
    assert sft["model.path"] == "sft" and "vqa.path" not in sft  # continued from SFT, on GRPO's prompts only


def test_vqa_base_trains_with_the_measured_optimiser(monkeypatch, tmp_path):
    """The VQA base runs align sft on the questions alone at lr 5e-4 with the vision tower trained, the measured
    settings in a 200-scene measurement: 2e-3 learned only the answer priors (docs/study.md, Changes)."""
    from lerobot_roboalign.demo import stages as demo_stages
    from lerobot_roboalign.study import stages

    calls = []
    monkeypatch.setattr(demo_stages, "roboalign", calls.append)
    cfg = StudyConfig(output_dir=tmp_path / "out", base="vqa")
    plan = {stage.name: stage for stage in stage_plan(cfg)}
    inputs = {"vqa_data": {"path": "q.json"}, "backbone": {"path": "b"}, "tokenizer": {"path": "fast"}}
    stages.vqa_base(cfg, plan["vqa_base"], inputs)
    flags = dict(a.removeprefix("--").split("=", 1) for a in calls[0] if a.startswith("--"))
    assert flags["vqa.only"] == "true" and flags["training.learning_rate"] == "5e-4"
    assert flags["model.freeze_vision"] == "false" and flags["training.max_steps"] == "600"


def test_stages_that_train_in_process_take_turns_while_heads_run_beside_them(tmp_path):
    """GRPO and the matched SFT both follow SFT; run in two threads of one process they broke each other (TRL and
    accelerate keep process-wide state). With two workers, heads still overlap them."""
    running, overlaps, lock = set(), [], threading.Lock()
    training = {"vqa_base", "sft", "grpo", "matched_sft"}

    def work(cfg, stage, inputs):
        with lock:
            running.add(stage.name)
            overlaps.append(set(running))
        time.sleep(0.3 if stage.kind in training else 0.01)
        with lock:
            running.discard(stage.name)
        return {}

    cfg = StudyConfig(output_dir=tmp_path, tiny=True, base="vqa", workers=2)
    run(cfg, {kind: work for kind in DEFAULT_RATES}, report=lambda *args: tmp_path)
    assert all(len(names & training) <= 1 for names in overlaps)
    assert any(names & training and any(n.startswith("head_base") for n in names) for names in overlaps)
