"""`align reason` over ranks: each rank writes its share, rank 0 merges one file equal to one process's."""

import json
import sys

import pytest

from lerobot_roboalign.align.reason import ReasonConfig, main, merge_parts, part_path, read_reasoning
from lerobot_roboalign.runner import run_lerobot

TWO_CPU_PROCESSES = ["launch", "--multi_gpu", "--num_processes=2", "--num_machines=1", "--mixed_precision=no",
                     "--dynamo_backend=no"]


def reason_args(cfg, output) -> list[str]:
    return ["--source=scripted", f"--dataset.repo_ids=[{cfg.repo_ids[0]}]", f"--dataset.roots=[{cfg.roots[0]}]",
            "--dataset.cameras=[front]", "--dataset.chunk_size=2", "--dataset.num_samples=9", "--batch_size=2",
            f"--output={output}"]


@pytest.fixture
def reason_cfg(synthetic_dataset_factory):
    from lerobot_roboalign.align.data import AlignDataConfig

    root, repo_id = synthetic_dataset_factory(action_dim=2, state_dim=2, num_episodes=2, episode_length=12)
    return AlignDataConfig(repo_ids=[repo_id], roots=[str(root)])


@pytest.mark.slow
def test_two_ranks_write_the_file_of_one_process(reason_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    main(reason_args(reason_cfg, one))
    log = run_lerobot("accelerate", [*TWO_CPU_PROCESSES, "-m", "lerobot_roboalign.cli", "align", "reason",
                                     *reason_args(reason_cfg, two)], timeout=600)
    assert two.read_bytes() == one.read_bytes() and len(one.read_text().splitlines()) == 9
    assert log.count("reasoning (scripted:motion)") >= 2  # both ranks wrote (4 + 5 rows)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.jsonl", "two.jsonl"]  # parts and markers merged away


def test_an_interrupted_sharded_run_resumes_into_one_ordered_file(reason_cfg, tmp_path):
    one, resumed = tmp_path / "one.jsonl", tmp_path / "resumed.jsonl"
    main(reason_args(reason_cfg, one))
    rows = [json.loads(line) for line in one.read_text().splitlines()]
    resumed.write_text(json.dumps({"id": "other/0/0", "reasoning": "kept"}) + "\n")  # a row of another dataset
    part_path(resumed, 1).write_text("".join(json.dumps(r) + "\n" for r in rows[6:8]) + '{"id": "cut')  # rank 1, killed
    part_path(resumed, 0).write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))  # rank 0, killed
    resumed.with_name("resumed.jsonl.rank0.done").touch()  # a stale marker
    main(reason_args(reason_cfg, resumed))
    lines = resumed.read_text().splitlines()
    assert json.loads(lines[0])["reasoning"] == "kept"
    assert "\n".join(lines[1:]) + "\n" == one.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.jsonl", "resumed.jsonl"]


def test_merge_orders_rows_by_sample(tmp_path):
    output = tmp_path / "r.jsonl"
    part_path(output, 0).write_text('{"id": "b", "reasoning": "2"}\n')
    part_path(output, 1).write_text('{"id": "c", "reasoning": "3"}\n{"id": "a", "reasoning": "1"}\n')
    merge_parts(output, ["a", "b", "c"])
    assert [row["id"] for row in read_reasoning(output).values()] == ["a", "b", "c"]


def test_vllm_engine_without_vllm_is_a_clear_error(monkeypatch):
    from lerobot_roboalign.align.reason import import_vllm

    monkeypatch.setitem(sys.modules, "vllm", None)  # as if not installed
    with pytest.raises(ImportError, match=r"--engine=vllm needs vLLM.*\[vllm\].*--engine=hf"):
        import_vllm()
    with pytest.raises(ValueError, match="--engine='tgi' is not one of"):
        ReasonConfig(engine="tgi")
