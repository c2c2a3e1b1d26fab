"""SFT and GRPO learn on a tiny backbone, and a GRPO run killed by SIGKILL resumes (all slow: real training)."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lerobot_roboalign.align.common import ModelConfig, save_final
from lerobot_roboalign.align.data import load_samples
from lerobot_roboalign.align.grpo import load_aligned, score_model
from lerobot_roboalign.align.reason import ScriptedReasoning, write_reasoning

pytestmark = pytest.mark.slow


def data_args(cfg) -> list[str]:
    return [
        f"--dataset.repo_ids=[{cfg.repo_ids[0]}]",
        f"--dataset.roots=[{cfg.roots[0]}]",
        "--dataset.cameras=[front]",
        f"--dataset.chunk_size={cfg.chunk_size}",
        f"--dataset.num_samples={cfg.num_samples}",
    ]


def training_args(output: Path, lr: float, steps: int, batch: int, save_steps: int = 1000) -> list[str]:
    return [
        f"--training.output_dir={output}",
        f"--training.learning_rate={lr}",
        "--training.lr_scheduler_type=constant",
        "--training.warmup_ratio=0",
        f"--training.max_steps={steps}",
        f"--training.per_device_train_batch_size={batch}",
        "--training.logging_steps=2",
        f"--training.save_steps={save_steps}",
    ]


def grpo_args(model: Path, cfg, output: Path, steps: int, save_steps: int = 1000) -> list[str]:
    return [
        f"--model.path={model}",
        *data_args(cfg),
        *training_args(output, 1e-4, steps, 10, save_steps),
        "--grpo.max_completion_length=24",
    ]


def scripted_sft(backbone: Path, cfg, work: Path, extra_args: list[str] = ()) -> Path:
    """``backbone`` after SFT (40 steps) on 4 frames with short scripted reasoning, through the CLI entry point."""
    from lerobot_roboalign.align import sft

    reasoning = work / "reasoning.jsonl"
    task_word = ScriptedReasoning(lambda s: "move " + s["task"].split()[-1], name="scripted:task-word")
    write_reasoning(load_samples(cfg), task_word, reasoning, batch_size=4)
    argv = [f"--model.path={backbone}", *data_args(cfg), f"--reasoning={reasoning}",
            "--fast_vocab_size=32", *training_args(work / "run", 5e-3, 40, 4), *extra_args]
    return sft.main(argv)


@pytest.fixture(scope="module")
def sft_model(tiny_qwen25_backbone, align_data_config, tmp_path_factory) -> Path:
    """The tiny backbone after SFT on 4 frames with short scripted reasoning."""
    return scripted_sft(tiny_qwen25_backbone, align_data_config, tmp_path_factory.mktemp("sft"))


@pytest.fixture(scope="module")
def samples(sft_model, align_data_config) -> list[dict]:
    return load_samples(align_data_config, load_aligned(ModelConfig(path=str(sft_model)))[3])


def test_sft_lowers_answer_loss_and_raises_format_rate(sft_model, samples, tiny_qwen25_backbone, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from lerobot_roboalign.action_vocab import ActionVocabulary

    rows = [r for r in csv.DictReader((sft_model.parent / "metrics.csv").open()) if r["loss"]]
    assert float(rows[-1]["loss"]) < 0.5 * float(rows[0]["loss"])
    assert float(rows[-1]["mean_token_accuracy"]) > float(rows[0]["mean_token_accuracy"])
    assert (sft_model.parent / "metrics.png").is_file()
    fast = load_aligned(ModelConfig(path=str(sft_model)))[3]
    base = AutoModelForImageTextToText.from_pretrained(tiny_qwen25_backbone)
    processor = AutoProcessor.from_pretrained(tiny_qwen25_backbone)
    before = save_final(base, processor, ActionVocabulary.extend(base, processor.tokenizer, fast), tmp_path)
    settings = dict(num_generations=4, temperature=0.5, max_new_tokens=24)
    assert score_model(str(sft_model), samples, **settings)["format"] > score_model(str(before), samples, **settings)["format"]


def test_grpo_after_sft_raises_mean_reward(sft_model, samples, align_data_config, tmp_path):
    from lerobot_roboalign.align import grpo

    final = grpo.main(grpo_args(sft_model, align_data_config, tmp_path / "grpo", steps=8))
    settings = dict(num_generations=8, temperature=1.0, top_p=0.99, max_new_tokens=24, seed=0)
    after, before = score_model(str(final), samples, **settings), score_model(str(sft_model), samples, **settings)
    assert after["reward"] > before["reward"], (before, after)


def test_grpo_killed_and_resumed_reaches_the_same_step(sft_model, align_data_config, tmp_path):
    output = tmp_path / "grpo"
    command = [sys.executable, "-m", "lerobot_roboalign.cli", "align", "grpo",
               *grpo_args(sft_model, align_data_config, output, steps=4, save_steps=2)]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (output / "checkpoint-2" / "action_vocab.json").exists():
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (output / "model").exists()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
    state = json.loads((output / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    steps = [int(r["step"]) for r in csv.DictReader((output / "metrics.csv").open()) if r.get("loss")]
    assert steps == sorted(set(steps)) and steps[-1] == 4  # no step logged twice after the resume
    assert not [p.name for p in output.iterdir() if p.name.startswith(".")]  # no half-written staging dir
    model, _, vocabulary, _ = load_aligned(ModelConfig(path=str(output / "model")))
    assert model.get_input_embeddings().num_embeddings > max(vocabulary.action_ids)


def assert_a_vla_trains_on(backbone: Path, align_dataset, output: Path) -> None:
    """Two ``lerobot-train`` steps on ``backbone`` write a checkpoint that names it as its backbone."""
    from lerobot_roboalign.runner import run_lerobot, train_args

    root, repo_id = align_dataset
    run_lerobot("lerobot-train", train_args(root, repo_id, backbone, output, steps=2))
    checkpoint = output / "checkpoints" / "000002" / "pretrained_model"
    assert (checkpoint / "model.safetensors").is_file()
    assert json.loads((checkpoint / "config.json").read_text())["vlm_model_name"] == str(backbone)


def test_aligned_checkpoint_trains_a_vla_through_lerobot_train(sft_model, align_dataset, tmp_path):
    assert_a_vla_trains_on(sft_model, align_dataset, tmp_path / "vla")
