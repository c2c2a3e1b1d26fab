"""Alignment commands check the launch against the machine before loading anything, and say what to change."""

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lerobot_roboalign.align.launch import LaunchRequest, launch_problems

EXAMPLES = Path(__file__).parents[2] / "examples" / "accelerate"


def request(**changes) -> LaunchRequest:
    return LaunchRequest(**{"processes": 8, "cpu": False, "mixed_precision": "bf16", "deepspeed": False, "fsdp": False,
                            **changes})


@pytest.mark.parametrize(("launch", "gpus", "bf16", "installed", "fix"), [
    (request(), 0, False, True, "ACCELERATE_USE_CPU=true accelerate launch --config_file examples/accelerate/cpu/ddp.yaml"),
    (request(processes=2, mixed_precision="no", fsdp=True), 0, False, True, "ACCELERATE_USE_CPU=true"),
    (request(), 2, True, True, "--num_processes=2"),
    (request(processes=2), 2, False, True, "--mixed_precision=fp16"),
    (request(processes=2, deepspeed=True), 2, True, False, "pip install 'lerobot_policy_roboalign[deepspeed]'"),
    (request(processes=2, cpu=True, deepspeed=True), 0, False, False, "pip install"),
])
def test_each_mismatch_names_its_fix(launch, gpus, bf16, installed, fix):
    [problem] = launch_problems(launch, gpus, bf16, installed)
    assert fix in problem


@pytest.mark.parametrize(("launch", "gpus"), [
    (request(), 8),
    (request(processes=2, mixed_precision="no", cpu=True, fsdp=True), 0),  # the CPU config, tiny sizes
    (request(processes=1, mixed_precision="no"), 0),  # no accelerate launch at all
    (request(processes=2, mixed_precision="no", deepspeed=True), 0),  # DeepSpeed's CPU accelerator, float32
])
def test_launches_that_fit_pass(launch, gpus):
    assert launch_problems(launch, gpus, bf16_gpu=True, deepspeed_installed=True) == []


def test_launch_request_reads_what_accelerate_launch_sets():
    env = {"LOCAL_WORLD_SIZE": "8", "ACCELERATE_MIXED_PRECISION": "bf16", "ACCELERATE_USE_FSDP": "true"}
    assert LaunchRequest.from_env(env) == request(fsdp=True)
    assert LaunchRequest.from_env({}) == request(processes=1, mixed_precision="no")


@pytest.mark.parametrize("command", ["sft", "grpo", "reason"])
def test_each_alignment_command_checks_before_loading(command, monkeypatch):
    module = importlib.import_module(f"lerobot_roboalign.align.{command}")
    for name, value in {"LOCAL_WORLD_SIZE": "8", "ACCELERATE_MIXED_PRECISION": "bf16"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    with pytest.raises(SystemExit, match="--num_processes=2"):
        module.main(["--dataset.repo_ids=[never/loaded]"])


@pytest.mark.slow
def test_the_8_gpu_launch_stops_at_once_on_a_machine_without_them():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"} | {"HF_HUB_OFFLINE": "1"}
    launch = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file", str(EXAMPLES / "ddp.yaml"),
              "--num_processes=2", "-m", "lerobot_roboalign.cli", "align", "sft", "--model.path=unused"]
    result = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "has no CUDA GPU" in result.stderr and "examples/accelerate/cpu/ddp.yaml" in result.stderr


@pytest.mark.slow
def test_the_cpu_config_runs_two_ranks(tiny_qwen25_backbone, synthetic_dataset_factory, tmp_path):
    root, repo_id = synthetic_dataset_factory(action_dim=2, state_dim=2, num_episodes=2, episode_length=12)
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "HF_HUB_OFFLINE": "1"}
    launch = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file", str(EXAMPLES / "cpu" / "ddp.yaml"),
              "-m", "lerobot_roboalign.cli", "align", "sft", f"--model.path={tiny_qwen25_backbone}",
              f"--dataset.repo_ids=[{repo_id}]", f"--dataset.roots=[{root}]", "--dataset.cameras=[front]",
              "--dataset.chunk_size=2", "--dataset.num_samples=4", "--fast_vocab_size=32",
              f"--training.output_dir={tmp_path}", "--training.max_steps=2", "--training.per_device_train_batch_size=1",
              "--training.save_steps=2"]
    result = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((tmp_path / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["epoch"] == 1.0  # 2 steps x 2 ranks x 1 sample = the 4 samples: both ranks trained
