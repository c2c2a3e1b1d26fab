"""The probe curve's fitting and the report's decision, on constructed inputs whose answer is known."""

import numpy as np

from lerobot_roboalign.study.config import StudyConfig
from lerobot_roboalign.study.probe_curve import curve
from lerobot_roboalign.scene_vqa import majority_correct
from lerobot_roboalign.study.report import failing_link, statistics, vqa_lines, write_report


def probe_inputs(noise: float, seed: int = 0):
    """Two tasks x 12 episodes x 3 frames; the chunk is a linear function of 6 features plus noise; the last 4
    episodes of each task are held out."""
    rng = np.random.default_rng(seed)
    tasks = np.repeat(["a", "b"], 36)
    episodes = np.repeat(np.arange(24), 3)
    rank = episodes % 12
    features = rng.normal(size=(72, 6))
    actions = features @ rng.normal(size=(6, 4)) + noise * rng.normal(size=(72, 4))
    return features, actions, tasks, episodes, rank, rank >= 8


def test_probe_reads_a_linear_action_and_beats_the_blind_baseline():
    features, *common = probe_inputs(noise=0.1)
    readable, blind = curve(features, *common, [2, 8]), curve(None, *common, [2, 8])
    assert readable[8]["r2"] > 0.9 and blind[8]["r2"] < 0.2
    assert readable[8]["l1"] < blind[8]["l1"]
    assert readable[8]["r2"] > readable[2]["r2"]  # more demonstrations, a better fit


def test_probe_on_features_unrelated_to_the_action_reads_nothing():
    _, *common = probe_inputs(noise=0.1)
    unrelated = np.random.default_rng(5).normal(size=(72, 6))
    assert curve(unrelated, *common, [8])[8]["r2"] < 0.2


def eval_results(cfg: StudyConfig, rates: dict[str, float]) -> dict:
    rng = np.random.default_rng(0)
    return {
        f"eval_{row}_s{seed}": {task: {str(20_000 + i): bool(rng.random() < rates[row]) for i in range(40)}
                                for task in ("reach_and_close", "pick_and_place")}
        for row in cfg.rows for seed in cfg.head_seeds
    }  # fmt: skip


def scores(alignment_low: float, target_low: float) -> dict:
    def score(low):
        model = {"format": 1.0, "action": 0.5, "l1": 0.2, "decode_rate": 0.25, "hit_cap": 1}
        versus = {"action": {"mean": low + 0.05, "low": low, "high": low + 0.1}}
        return {
            "n_frames": 8,
            "cap": 40,
            "longest_target": 24,
            "models": {"SFT + GRPO": model},
            "baselines": {"mean chunk per task (blind)": {"action": 0.2, "l1": 0.4}},
            "versus_blind": {"SFT + GRPO": versus},
        }

    return {"alignment": score(alignment_low), "target": score(target_low)}


def test_report_decides_by_the_primary_interval_and_names_the_failing_link(tmp_path):
    cfg = StudyConfig(output_dir=tmp_path, rows=["base", "sft", "roboalign"], head_seeds=[0, 1])
    better = statistics(cfg, eval_results(cfg, {"base": 0.2, "sft": 0.5, "roboalign": 0.9}))
    assert better["comparisons"]["roboalign - base"]["verdict"] == "supported"
    assert "roboalign - matched_sft" not in better["comparisons"]  # that row did not run
    same = eval_results(cfg, {"base": 0.5, "sft": 0.5, "roboalign": 0.5})
    same.update({k.replace("base", "roboalign"): v for k, v in same.items() if k.startswith("eval_base")})
    heads = {f"head_{row}_s0": {"loss": [1.0, 0.5]} for row in cfg.rows}
    report = write_report(cfg, [], {**same, **heads, "score": scores(0.1, -0.05)}, {"record_vla": 1.0}, 60.0)
    report = report.read_text()
    assert (
        "| SFT + GRPO | 1.000 | 0.250 | 1 | 0.500 | 0.750 | 0.200 | +0.150 [+0.100, +0.200] |" in report
    )  # greedy reward
    assert (
        "the claim is NOT SHOWN** (the two rows won exactly the same episodes: no difference shown)" in report
        and "Failing link, from the measured quantities: transfer" in report
    )
    for name in ("success.png", "learning_curves.png", "results.json"):
        assert (tmp_path / "study" / name).is_file()
    assert failing_link(scores(-0.01, 0.2), None).startswith("alignment")
    probe = {"demos": [10], "rows": {"roboalign": {10: {"r2": 0.6}}, "base": {10: {"r2": 0.4}}}}
    assert failing_link(scores(0.1, 0.1), probe).startswith("head")


def test_scene_question_table_puts_a_reading_backbone_above_the_blind_majority():
    types = ["side"] * 40 + ["gripper"] * 40
    truth = np.random.default_rng(0).random(80) < 0.5
    vqa = {"types": types, "correct": {"random backbone": list(truth), "base": [True] * 80,
                                       "blind majority": list(truth)}}  # fmt: skip
    lines = {line.split(" | ")[0]: line for line in vqa_lines(vqa, seed=0)}
    reading, chance = lines["| base"], lines["| random backbone"]
    assert "| 1.000 [0.954, 1.000] | 1.00 | 1.00 |" in reading
    low = float(reading.rsplit("[", 1)[1].split(",")[0])
    assert low > 0  # always right vs the majority's coin flips
    assert "+0.000 [+0.000, +0.000]" in chance  # the same answers as the blind majority: no difference
    assert lines["| blind majority"].endswith("| n/a |")


def test_majority_answer_comes_from_training_questions_per_type():
    def item(kind, answer):
        return {"type": kind, "conversations": [{"value": "q"}, {"value": answer}]}

    train = [item("side", "left")] * 3 + [item("side", "right"), item("gripper", "open")]
    test = [item("side", "left"), item("side", "right"), item("gripper", "closed"), item("count", "one")]
    assert majority_correct(train, test) == [True, False, False, False]  # an unseen type gets no guess
