"""Lazy alignment data: the same samples, rows and images in the same order as the eager code it replaced.

``eager_*`` below is the previous implementation, kept verbatim in substance as the reference: every frame read
through ``LeRobotDataset.__getitem__`` and turned into PIL images up front, every VQA image opened, and all rows
re-encoded by ``Dataset.from_list``.
"""

import json
from dataclasses import replace

import numpy as np
import pytest
from datasets import Dataset
from PIL import Image

from lerobot_roboalign.align.data import align_messages, answer_text, load_samples, to_pil
from lerobot_roboalign.align.reason import ScriptedReasoning, describe_motion
from lerobot_roboalign.align.vqa import VQAConfig


def eager_samples(cfg, fast) -> list[dict]:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from lerobot_roboalign.align.data import action_chunks, choose_frames, split_frames

    datasets = [LeRobotDataset(r, root=root, return_uint8=True) for r, root in zip(cfg.repo_ids, cfg.roots)]
    cameras = ["observation.images." + c for c in cfg.cameras]
    chunks = [action_chunks(d, cfg.chunk_size) for d in datasets]
    sources, frames = choose_frames([split_frames(d, cfg) for d in datasets], cfg.num_samples, cfg.seed)
    samples = []
    for d, index in zip(sources, frames, strict=True):
        item = datasets[d][int(index)]
        state = item["observation.state"].numpy() if cfg.include_state else None
        if state is not None and cfg.state_names:
            state = state[[int(n.split("_")[1]) for n in cfg.state_names]]
        episode, frame = int(item["episode_index"]), int(item["frame_index"])
        samples.append({
            "id": f"{datasets[d].repo_id}/{episode}/{frame}", "repo_id": datasets[d].repo_id,
            "episode_index": episode, "frame_index": frame, "task": item["task"], "state": state,
            "images": [to_pil(item[key], cfg.image_size) for key in cameras], "actions": chunks[d][index].copy(),
            "action_names": list(datasets[d].meta.features["action"]["names"]),
        })
    tokens = fast.encode(np.stack([s["actions"] for s in samples]))
    for sample, sample_tokens in zip(samples, tokens, strict=True):
        sample["fast_tokens"] = [int(t) for t in sample_tokens]
    return samples


def eager_vqa_rows(path, count: int, seed: int) -> list[dict]:
    records = json.loads(path.read_text())
    order = np.random.default_rng(seed).permutation(len(records))
    rows = []
    for i in range(count):
        record = records[order[i % len(records)]]
        roles = {"human": "user", "gpt": "assistant"}
        turns = [{"role": roles[t["from"]], "content": t["value"].replace("<image>", "").strip()}
                 for t in record["conversations"]]
        paths = record.get("image") or []
        paths = [paths] if isinstance(paths, str) else paths
        images = [Image.open(path.parent / p).convert("RGB") for p in paths]
        rows.append({"prompt": turns[:-1], "completion": turns[-1:], "images": images})
    return rows


def assert_same_images(lazy: list, eager: list) -> None:
    assert len(lazy) == len(eager)
    for a, b in zip(lazy, eager, strict=True):
        assert a.mode == b.mode == "RGB" and a.size == b.size
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.fixture
def vqa_file(tmp_path):
    """Five LLaVA records over three small PNGs (one record with two images, one with none)."""
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)).save(tmp_path / f"{name}.png")
    records = [
        {"id": i, "image": image, "conversations": [
            {"from": "human", "value": f"<image>\nWhat is shown in {i}?"}, {"from": "gpt", "value": f"answer {i}"}]}
        for i, image in enumerate(["a.png", ["b.png", "c.png"], None, "c.png", "a.png"])
    ]
    path = tmp_path / "vqa.json"
    path.write_text(json.dumps(records))
    return path


@pytest.fixture
def data_cfg(synthetic_dataset_factory):
    root, repo_id = synthetic_dataset_factory(action_dim=2, state_dim=3, num_episodes=3, episode_length=9)
    from lerobot_roboalign.align.data import AlignDataConfig

    return AlignDataConfig(repo_ids=[repo_id], roots=[str(root)], cameras=["front", "wrist"], chunk_size=2,
                           num_samples=11, include_state=True, state_names=["joint_2", "joint_0"], image_size=24)


@pytest.mark.parametrize("change", [{}, {"num_samples": None, "image_size": None, "state_names": []},
                                    {"holdout_every": 3, "split": "train", "seed": 4}])
def test_lazy_samples_equal_the_eager_ones(data_cfg, extended_backbone, change):
    fast = extended_backbone[3]
    cfg = replace(data_cfg, **change)
    lazy, eager = load_samples(cfg, fast), eager_samples(cfg, fast)
    assert len(lazy) == len(eager) > 0
    for new, old in zip(lazy, eager, strict=True):
        assert set(new) == set(old)
        for key in ("id", "repo_id", "episode_index", "frame_index", "task", "fast_tokens", "action_names"):
            assert new[key] == old[key], key
        np.testing.assert_array_equal(new["actions"], old["actions"])
        np.testing.assert_array_equal(new["state"], old["state"])
        assert_same_images(new["images"], old["images"])


def test_sft_rows_equal_the_eager_ones(data_cfg, extended_backbone, vqa_file):
    from lerobot_roboalign.align.sft import AlignSFTConfig, build_dataset

    vocabulary, fast = extended_backbone[2], extended_backbone[3]
    cfg = AlignSFTConfig(dataset=data_cfg, vqa=VQAConfig(path=vqa_file, ratio=1.2))
    samples = load_samples(data_cfg, fast)
    lazy = build_dataset(cfg, samples, vocabulary)

    old = eager_samples(data_cfg, fast)
    reasoning = ScriptedReasoning(describe_motion)(old)
    rows = [{"prompt": align_messages(s["task"], s["state"]),
             "completion": [{"role": "assistant", "content": answer_text(r, vocabulary.format_span(s["fast_tokens"]))}],
             "images": s["images"]} for s, r in zip(old, reasoning, strict=True)]
    rows += eager_vqa_rows(vqa_file, round(1.2 * len(rows)), data_cfg.seed)
    eager = Dataset.from_list(rows).shuffle(seed=data_cfg.seed)

    assert len(lazy) == len(eager) == 11 + 13
    assert sum(not row["images"] for row in eager) > 0  # the text-only VQA record is among them
    for new, old_row in zip(lazy, eager, strict=True):
        assert set(new) == {"prompt", "completion", "images"}
        assert new["prompt"] == old_row["prompt"] and new["completion"] == old_row["completion"]
        assert_same_images(new["images"], old_row["images"])


def test_grpo_rows_equal_the_eager_ones(data_cfg, extended_backbone):
    from lerobot_roboalign.align.grpo import build_dataset

    fast = extended_backbone[3]
    lazy = build_dataset(load_samples(data_cfg, fast))
    old = eager_samples(data_cfg, fast)
    eager = Dataset.from_list([{"prompt": align_messages(s["task"], s["state"]), "images": s["images"],
                                "fast_tokens": s["fast_tokens"]} for s in old])
    batch = lazy.__getitems__([3, 0, 7])  # how the trainer's DataLoader reads a batch
    for new, index in zip(batch, [3, 0, 7], strict=True):
        assert new["prompt"] == eager[index]["prompt"] and new["fast_tokens"] == eager[index]["fast_tokens"]
        assert_same_images(new["images"], eager[index]["images"])


def test_nothing_is_decoded_before_a_row_is_read(data_cfg, extended_backbone, vqa_file, monkeypatch):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from lerobot_roboalign.align.sft import AlignSFTConfig, build_dataset

    frames, opened = [], []
    read_frame, open_image = LeRobotDataset.__getitem__, Image.open
    monkeypatch.setattr(LeRobotDataset, "__getitem__", lambda self, i: frames.append(i) or read_frame(self, i))
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(a[0]) or open_image(*a, **k))
    cfg = AlignSFTConfig(dataset=data_cfg, vqa=VQAConfig(path=vqa_file, ratio=1.2))
    dataset = build_dataset(cfg, load_samples(data_cfg, extended_backbone[3]), extended_backbone[2])
    assert frames == [] and opened == []  # samples, reasoning, VQA rows: references only
    rows = dataset.__getitems__([0, 1, 2, 3])
    assert len(frames) + len(opened) == sum(len(row["images"]) for row in rows) > 0  # these rows' images, no more


def test_missing_vqa_image_is_a_clear_error_before_training(vqa_file):
    from lerobot_roboalign.align.vqa import vqa_references

    (vqa_file.parent / "c.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"VQA images .* do not exist .*c\.png.*--vqa.image_root"):
        vqa_references(VQAConfig(path=vqa_file), 5, 0)


def test_samples_behave_like_the_list_they_replaced(data_cfg, extended_backbone):
    samples = load_samples(data_cfg, extended_backbone[3])
    ids = [s["id"] for s in samples]
    assert [s["id"] for s in samples[2:5]] == ids[2:5] and samples[-1]["id"] == ids[-1]
    assert [s["id"] for s in samples[:2] + samples[9:]] == ids[:2] + ids[9:]
    assert dict(samples[0]).keys() == samples[0].keys() and "fast_tokens" in samples[0]
    with pytest.raises(IndexError):
        samples[len(samples)]
