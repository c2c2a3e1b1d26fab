"""Alignment samples, resumable reasoning, and the errors for bad input."""

import json
from dataclasses import replace

import numpy as np
import pytest

from lerobot_roboalign.align.common import ModelConfig
from lerobot_roboalign.align.data import action_chunks, load_samples
from lerobot_roboalign.align.reason import ScriptedReasoning, describe_motion, read_reasoning, write_reasoning
from lerobot_roboalign.fast import FastTokenizer


def test_samples_hold_images_task_state_and_fast_tokens(align_data_config):
    cfg = replace(align_data_config, cameras=["front", "wrist"], include_state=True)
    fast = FastTokenizer.fit(np.random.default_rng(0).uniform(-1, 1, (32, 2, 2)), vocab_size=64)
    samples = load_samples(cfg, fast)
    assert len(samples) == 4 and len({s["id"] for s in samples}) == 4
    for sample in samples:
        assert len(sample["images"]) == 2 and sample["images"][0].mode == "RGB"
        assert sample["actions"].shape == (2, 2) and sample["state"].shape == (2,)
        assert sample["fast_tokens"] == fast.encode(sample["actions"][None])[0]
        assert sample["task"] in ("pick up the red cube", "push the blue block left")


@pytest.mark.parametrize("chunk_size", [1, 3, 40])  # 40: longer than every episode, padded from the first frame
def test_action_chunks_are_lerobots_delta_timestamp_chunks(align_data_config, chunk_size):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    repo_id, root = align_data_config.repo_ids[0], align_data_config.roots[0]
    plain = LeRobotDataset(repo_id, root=root)
    delta = {"action": [i / plain.meta.fps for i in range(chunk_size)]}
    queried = LeRobotDataset(repo_id, root=root, delta_timestamps=delta)
    chunks = action_chunks(plain, chunk_size)
    assert chunks.shape == (len(plain), chunk_size, 2)
    assert plain.meta.total_episodes > 1  # the episode boundaries are crossed
    for index in range(len(plain)):
        np.testing.assert_array_equal(chunks[index], queried[index]["action"].numpy(), err_msg=str(index))


def test_state_names_choose_the_state_entries_of_the_prompt(align_data_config):
    from lerobot_roboalign.align.data import align_messages

    every = load_samples(replace(align_data_config, include_state=True))
    chosen = load_samples(replace(align_data_config, include_state=True, state_names=["joint_1"]))
    for full, one in zip(every, chosen, strict=True):
        assert one["state"].tolist() == [full["state"][1]]
        prompt = align_messages(one["task"], one["state"])[0]["content"]
        assert f"[{full['state'][1]:.2f}]" in prompt and f"{full['state'][0]:.2f}," not in prompt
    with pytest.raises(ValueError, match=r"no state entries \['ee_x'\].*joint_0.*--dataset.state_names"):
        load_samples(replace(align_data_config, include_state=True, state_names=["ee_x"]))


def test_missing_camera_is_a_clear_error(align_data_config):
    with pytest.raises(ValueError, match=r"no camera \['top'\].*--dataset.cameras"):
        load_samples(replace(align_data_config, cameras=["top"]))


def test_fast_tokenizer_of_another_action_dim_is_a_clear_error(align_data_config):
    fast = FastTokenizer.fit(np.random.default_rng(0).uniform(-1, 1, (32, 2, 3)), vocab_size=64)
    with pytest.raises(ValueError, match="fitted on 3-D actions.*2-D actions.*tokenizer fit"):
        load_samples(align_data_config, fast)


def test_backbone_without_action_vocabulary_is_a_clear_error(tiny_qwen25_backbone):
    from lerobot_roboalign.align.grpo import load_aligned

    with pytest.raises(FileNotFoundError, match="align sft"):
        load_aligned(ModelConfig(path=str(tiny_qwen25_backbone)))


def test_reasoning_is_labelled_and_resumes_after_a_kill(align_data_config, tmp_path):
    samples = load_samples(align_data_config)
    calls = []

    def describe(sample):
        calls.append(sample["id"])
        return describe_motion(sample)

    source = ScriptedReasoning(describe)
    output = tmp_path / "reasoning.jsonl"
    write_reasoning(samples[:2], source, output, batch_size=1)
    with output.open("a") as file:  # a write cut off by SIGKILL
        file.write('{"id": "half')
    calls.clear()
    rows = write_reasoning(samples, source, output, batch_size=3)
    assert calls == [s["id"] for s in samples[2:]]  # only the missing ones are asked again
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert [row["id"] for row in lines] == [s["id"] for s in samples]
    assert {row["source"] for row in lines} == {"scripted:motion"}
    assert read_reasoning(output) == rows
    assert all(row["reasoning"].startswith("To ") and "gripper" in row["reasoning"] for row in lines)


def test_mllm_reasoning_source_asks_the_backbone(align_data_config, tiny_qwen25_backbone, tmp_path):
    from lerobot_roboalign.align.reason import MLLMReasoning

    samples = load_samples(align_data_config)[:2]
    rows = write_reasoning(samples, MLLMReasoning(str(tiny_qwen25_backbone), max_new_tokens=6), tmp_path / "r.jsonl", 2)
    assert {row["source"] for row in rows.values()} == {"mllm:qwen2_5_vl"}
    assert all(isinstance(row["reasoning"], str) and row["reasoning"] for row in rows.values())
