"""Distributed training as users launch it: accelerate reads the example configs, and 2 CPU processes (gloo)
train the VLA with lerobot-train and align the MLLM with `roboalign align sft` (TRL), each leaving a
checkpoint that reloads."""

import json
from pathlib import Path

import pytest
import torch
from accelerate.commands.launch import _validate_launch_command, launch_command_parser

from lerobot_roboalign.runner import TINY_POLICY_ARGS, lerobot_command, run_lerobot

EXAMPLES_DIR = Path(__file__).parents[1] / "examples" / "accelerate"
EXAMPLES = sorted(EXAMPLES_DIR.glob("*.yaml"))
# `accelerate launch --cpu --num_processes=2` starts ONE process (its simple launcher ignores the count without
# mpirun). Two gloo ranks on CPU: torchrun through --multi_gpu, with Accelerator told to use the CPU.
TWO_CPU_PROCESSES = ["launch", "--multi_gpu", "--num_processes=2", "--num_machines=1", "--mixed_precision=no",
                     "--dynamo_backend=no"]


@pytest.fixture
def cpu_ranks(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")  # inherited by the launched processes


@pytest.mark.parametrize("config", EXAMPLES, ids=lambda p: p.stem)
def test_accelerate_reads_the_example_configs(config):
    command = ["--config_file", str(config), "-m", "lerobot_roboalign.cli", "align", "sft"]
    parsed = launch_command_parser().parse_args(command)
    args, _, _ = _validate_launch_command(parsed)
    assert args.num_processes == 8 and args.mixed_precision == "bf16"
    assert args.use_deepspeed or args.use_fsdp or (config.stem == "ddp" and args.multi_gpu)
    if args.use_deepspeed:
        assert args.zero_stage == int(config.stem[-1])  # deepspeed_zero2 / deepspeed_zero3
    assert args.training_script == "lerobot_roboalign.cli" and args.training_script_args == ["align", "sft"]


@pytest.mark.slow
def test_lerobot_train_on_two_processes_writes_a_checkpoint_that_reloads(
    cpu_ranks, tiny_qwen25_backbone, synthetic_dataset, tmp_path
):
    from lerobot.common.train_utils import load_training_num_processes
    from lerobot.configs import PreTrainedConfig
    from lerobot.datasets import LeRobotDataset
    from lerobot.policies.factory import make_policy, make_pre_post_processors

    root, repo_id = synthetic_dataset
    output = tmp_path / "vla"
    log = run_lerobot("accelerate", [
        *TWO_CPU_PROCESSES, lerobot_command("lerobot-train"),
        f"--dataset.repo_id={repo_id}", f"--dataset.root={root}", "--policy.type=roboalign",
        f"--policy.vlm_model_name={tiny_qwen25_backbone}", *TINY_POLICY_ARGS, "--steps=2", "--batch_size=2",
        "--save_freq=2", "--log_freq=1", "--num_workers=0", f"--output_dir={output}", "--wandb.enable=false",
    ], timeout=600)
    assert "Effective batch size: 2 x 2 = 4" in log
    assert load_training_num_processes(output / "checkpoints" / "last") == 2
    checkpoint = output / "checkpoints" / "last" / "pretrained_model"
    config = PreTrainedConfig.from_pretrained(checkpoint)
    config.pretrained_path = checkpoint
    dataset = LeRobotDataset(repo_id, root=root)
    policy = make_policy(config, ds_meta=dataset.meta)
    preprocessor, postprocessor = make_pre_post_processors(config, pretrained_path=checkpoint)
    frame = dataset[0]
    obs = {k: v for k, v in frame.items() if k.startswith("observation.")} | {"task": frame["task"]}
    action = postprocessor(policy.select_action(preprocessor(obs)))
    assert action.shape == (1, 6) and torch.isfinite(action).all()


@pytest.mark.slow
def test_align_sft_on_two_processes_writes_a_model_that_reloads(
    cpu_ranks, tiny_qwen25_backbone, synthetic_dataset_factory, tmp_path
):
    from lerobot_roboalign.align.common import ModelConfig
    from lerobot_roboalign.align.grpo import load_aligned

    root, repo_id = synthetic_dataset_factory(action_dim=2, state_dim=2, num_episodes=2, episode_length=12)
    output = tmp_path / "sft"
    run_lerobot("accelerate", [
        *TWO_CPU_PROCESSES, "-m", "lerobot_roboalign.cli", "align", "sft",
        f"--model.path={tiny_qwen25_backbone}", f"--dataset.repo_ids=[{repo_id}]", f"--dataset.roots=[{root}]",
        "--dataset.cameras=[front]", "--dataset.chunk_size=2", "--dataset.num_samples=4", "--fast_vocab_size=32",
        f"--training.output_dir={output}", "--training.max_steps=2", "--training.per_device_train_batch_size=1",
        "--training.save_steps=2", "--training.logging_steps=1",
    ], timeout=600)
    state = json.loads((output / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["epoch"] == 1.0  # 2 steps x 2 processes x 1 sample = all 4 samples: both ranks trained
    assert (output / "checkpoint-2" / "action_vocab.json").is_file()
    assert not [p.name for p in output.iterdir() if p.name.startswith(".")]  # one writer, no staging left
    model, _, vocabulary, _ = load_aligned(ModelConfig(path=str(output / "model")))
    assert model.get_input_embeddings().num_embeddings > max(vocabulary.action_ids)


# FSDP and DeepSpeed on 2 CPU ranks: accelerate maps them onto GPU ranks only, tests/align/sharded_launch.py is the
# documented shim. Their own example configs, with 2 processes and no mixed precision (none on gloo CPU ranks).
SHARDED_LAUNCH = Path(__file__).parent / "align" / "sharded_launch.py"
SHARDED = {  # kind: (config, environment, what the trainer writes into a checkpoint instead of a whole model)
    "fsdp": (EXAMPLES_DIR / "fsdp.yaml", {"ACCELERATE_USE_CPU": "true"}, "pytorch_model_fsdp_0"),
    "zero2": (EXAMPLES_DIR / "deepspeed_zero2.yaml", {}, "global_step2"),
    "zero3": (EXAMPLES_DIR / "deepspeed_zero3.yaml", {}, "global_step2"),
}


def sharded_sft(kind: str, backbone: Path, data: tuple[Path, str], output: Path, steps: int, monkeypatch) -> Path:
    """`align sft` of ``steps`` steps (a checkpoint every 2) on 2 ranks; each rank's own shards in output/shards."""
    config, env, _ = SHARDED[kind]
    root, repo_id = data
    shards = output / f"shards-{steps}"
    shards.mkdir(parents=True)
    for name, value in {**env, "SHARDS_DIR": str(shards)}.items():
        monkeypatch.setenv(name, value)
    run_lerobot("accelerate", [
        "launch", "--config_file", str(config), "--num_processes=2", "--mixed_precision=no", str(SHARDED_LAUNCH),
        "align", "sft", f"--model.path={backbone}", f"--dataset.repo_ids=[{repo_id}]", f"--dataset.roots=[{root}]",
        "--dataset.cameras=[front]", "--dataset.chunk_size=2", "--dataset.num_samples=4", "--fast_vocab_size=32",
        f"--training.output_dir={output / 'run'}", f"--training.max_steps={steps}",
        "--training.per_device_train_batch_size=1", "--training.save_steps=2", "--training.logging_steps=1",
    ], timeout=600)
    return shards


def parameters(path: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(path, dtype="auto")
    return {name: param.detach() for name, param in model.named_parameters()}


def from_shards(shards: Path, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The trained weights rebuilt from both ranks' shards (FSDP: rows of dim 0; ZeRO-3: a padded flat split)."""
    ranks = [torch.load(shards / f"rank{i}.pt") for i in range(2)]
    full = {}
    for name, reference in like.items():
        parts = [rank[name] for rank in ranks]
        if parts[0].shape == reference.shape:  # not sharded (ZeRO-2 replicates the weights)
            full[name] = parts[0]
        elif parts[0].dim() == reference.dim() and parts[0].shape[1:] == reference.shape[1:]:
            full[name] = torch.cat(parts)
        else:
            full[name] = torch.cat([p.flatten() for p in parts])[: reference.numel()].view(reference.shape)
    return full


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["fsdp", "zero3", "zero2"])
def test_sharded_sft_saves_the_whole_float32_model_and_resumes(
    kind, tiny_qwen25_backbone, synthetic_dataset_factory, tmp_path, monkeypatch
):
    if kind.startswith("zero"):
        pytest.importorskip("deepspeed")
    data = synthetic_dataset_factory(action_dim=2, state_dim=2, num_episodes=2, episode_length=12)
    shards = sharded_sft(kind, tiny_qwen25_backbone, data, tmp_path, steps=2, monkeypatch=monkeypatch)
    checkpoint = tmp_path / "run" / "checkpoint-2"
    assert (checkpoint / SHARDED[kind][2]).is_dir()  # the trainer's own sharded state, not a gathered copy
    # The trainer config existed before from_pretrained, so the launch's sharded load was on when it ran
    loads = [json.loads((shards / f"load{i}.json").read_text()) for i in range(2)]
    expected = {"zero3_init": kind == "zero3", "fsdp_cpu_ram_efficient_loading": kind == "fsdp"}
    assert loads == [expected, expected]
    ranks = [torch.load(shards / f"rank{i}.pt") for i in range(2)]
    embeddings = "model.language_model.embed_tokens.weight"
    full_size = parameters(tiny_qwen25_backbone)[embeddings].numel()
    assert (ranks[0][embeddings].numel() < full_size) == (kind != "zero2")  # FSDP and ZeRO-3 really shard
    saved = parameters(tmp_path / "run" / "model")
    assert {p.dtype for p in saved.values()} == {torch.float32}
    trained = from_shards(shards, saved)
    for name, weight in saved.items():
        torch.testing.assert_close(weight, trained[name], rtol=0, atol=0, msg=name)
    base = parameters(tiny_qwen25_backbone)
    assert not torch.equal(saved["model.language_model.layers.0.mlp.up_proj.weight"],
                           base["model.language_model.layers.0.mlp.up_proj.weight"])

    # Resume from the sharded checkpoint. Its cosine schedule (over 2 steps) ended at lr 0 and the restored
    # optimizer carries that into step 3: the resumed model must be exactly the checkpoint's weights (rebuilt
    # from the base, then restored by the trainer), not the base's.
    sharded_sft(kind, tiny_qwen25_backbone, data, tmp_path, steps=3, monkeypatch=monkeypatch)
    state = json.loads((tmp_path / "run" / "checkpoint-3" / "trainer_state.json").read_text())
    first = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["global_step"] == 3 and state["log_history"][:2] == first["log_history"][:2]
    assert state["log_history"][2]["learning_rate"] == 0
    resumed = parameters(tmp_path / "run" / "model")
    for name, weight in resumed.items():
        torch.testing.assert_close(weight, trained[name], rtol=0, atol=0, msg=name)
