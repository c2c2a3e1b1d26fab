"""Alignment trains float32 master weights under bf16 autocast (issue 10, item 7) with the trainer's config built
before the model (issue 25: sharded init), gradient checkpointing and a bf16 KL reference.

The CUDA configuration is checked through the functions that decide it (no GPU here); the CPU runs use the
same mechanism (accelerate's autocast, which is CPU autocast with ``use_cpu``) and check that a bf16-configured
run changes the weights as a float32 run does, norm weights included.
"""

import importlib
from pathlib import Path

import draccus
import pytest
import torch
from transformers import AutoModelForImageTextToText

from lerobot_roboalign.align import common

from lerobot_roboalign.align import sft
from lerobot_roboalign.align.common import load_model_and_processor
from lerobot_roboalign.align.config import ModelConfig, TrainingConfig
from lerobot_roboalign.align.sft import AlignSFTConfig
from lerobot_roboalign.alignment_format import AlignmentFormat
from lerobot_roboalign.precision import align_precision


def test_a_cuda_run_trains_float32_weights_under_bf16_autocast():
    plan = align_precision("auto", "cuda", bf16_supported=True)
    assert (plan.load, plan.trainable, plan.autocast, plan.frozen) == (
        torch.float32, torch.float32, torch.bfloat16, torch.bfloat16
    )
    kwargs = TrainingConfig().trainer_kwargs(plan)
    assert kwargs["bf16"] and not kwargs["fp16"]
    assert plan.trainer_flags("cuda") == {"bf16": True, "fp16": False, "use_cpu": False}


def test_cpu_and_old_gpus_default_to_float32_and_bf16_is_cpu_autocast():
    for plan in (align_precision("auto", "cpu"), align_precision("auto", "cuda", bf16_supported=False)):
        assert (plan.load, plan.autocast, plan.frozen) == (torch.float32, None, torch.float32)
        assert plan.trainer_flags("cpu") == {"bf16": False, "fp16": False, "use_cpu": False}
    plan = align_precision("bfloat16", "cpu")
    assert (plan.load, plan.autocast) == (torch.float32, torch.bfloat16)
    assert plan.trainer_flags("cpu") == {"bf16": True, "fp16": False, "use_cpu": True}
    with pytest.raises(ValueError, match="not a torch dtype"):
        align_precision("half-ish", "cpu")


def test_training_loads_float32_and_inference_the_compute_dtype(tiny_qwen25_backbone):
    cfg = ModelConfig(path=str(tiny_qwen25_backbone), dtype="bfloat16")
    trained, _ = load_model_and_processor(cfg, training=True)
    assert {p.dtype for p in trained.parameters()} == {torch.float32}
    inference, _ = load_model_and_processor(cfg)
    assert {p.dtype for p in inference.parameters()} == {torch.bfloat16}


def language_weights(path: Path) -> dict[str, torch.Tensor]:
    """The LLM layers' weights in the dtype they were saved in."""
    model = AutoModelForImageTextToText.from_pretrained(path, dtype="auto")
    return {k: v.detach().clone() for k, v in model.named_parameters() if ".language_model.layers." in k}


def changed_fraction(before: dict, after: dict, match: str = "") -> float:
    """Fraction of elements that differ, ``before`` rounded to ``after``'s dtype (rounding is no change)."""
    keys = [k for k in before if match in k]
    changed = sum(int((before[k].to(after[k].dtype) != after[k]).sum()) for k in keys)
    return changed / sum(before[k].numel() for k in keys)


def sft_run(backbone: Path, data, output: Path, dtype: str, monkeypatch) -> tuple[Path, list]:
    """A 3-step SFT at GRPO's lr 1e-6; returns the final model and the dtypes seen during training."""
    from trl import SFTTrainer

    seen = []
    original = SFTTrainer.training_step

    def spy(self, model, inputs, *args, **kwargs):
        linear = next(m for n, m in model.named_modules() if n.endswith("layers.0.mlp.up_proj"))
        handle = linear.register_forward_hook(lambda m, i, o: seen.append(("matmul", o.dtype)))
        try:
            return original(self, model, inputs, *args, **kwargs)
        finally:
            handle.remove()
            state = {s["exp_avg"].dtype for s in self.optimizer.state.values() if "exp_avg" in s}
            if state:  # empty before the first optimizer step
                seen.append(("adam", state))
            seen.append(("trained", {p.dtype for p in model.parameters() if p.requires_grad}))
            seen.append(("checkpointing", self.accelerator.unwrap_model(model).is_gradient_checkpointing))

    monkeypatch.setattr(SFTTrainer, "training_step", spy)
    cfg = AlignSFTConfig(
        dataset=data,
        model=ModelConfig(path=str(backbone), dtype=dtype),
        training=TrainingConfig(
            output_dir=output, learning_rate=1e-6, lr_scheduler_type="constant", warmup_ratio=0.0, max_steps=3,
            per_device_train_batch_size=2, logging_steps=1, save_steps=1000,
        ),
        fast_vocab_size=32,
    )
    return sft.train(cfg), seen


@pytest.mark.slow
def test_bf16_configured_sft_changes_the_weights_as_float32_does(
    tiny_qwen25_backbone, align_data_config, tmp_path, monkeypatch
):
    before = language_weights(tiny_qwen25_backbone)
    fractions = {}
    for dtype in ("float32", "bfloat16"):
        final, seen = sft_run(tiny_qwen25_backbone, align_data_config, tmp_path / dtype, dtype, monkeypatch)
        after = language_weights(final)
        assert AlignmentFormat.from_pretrained(str(final)) == AlignmentFormat.from_data_config(align_data_config)
        fractions[dtype] = (changed_fraction(before, after), changed_fraction(before, after, "layernorm"))
        expected_matmul = torch.bfloat16 if dtype == "bfloat16" else torch.float32
        assert {d for kind, d in seen if kind == "matmul"} == {expected_matmul}  # autocast ran (or did not)
        assert [d for kind, d in seen if kind == "adam"] == [{torch.float32}] * 2  # steps 2 and 3 see the state
        assert all(d == {torch.float32} for kind, d in seen if kind == "trained")
        assert {on for kind, on in seen if kind == "checkpointing"} == {True}  # the default, as TRL's
    print("changed fraction (all LLM-layer weights, norm weights):", fractions)
    assert fractions["float32"][0] > 0.9 and fractions["float32"][1] > 0.9
    assert fractions["bfloat16"][0] > 0.95 * fractions["float32"][0]
    assert fractions["bfloat16"][1] > 0.95 * fractions["float32"][1]


@pytest.mark.slow
def test_bf16_configured_grpo_trains_float32_against_a_bf16_reference(extended_dir, align_data_config, tmp_path,
                                                                      monkeypatch):
    from trl import GRPOTrainer

    from lerobot_roboalign.align import grpo

    trainers = []
    train = GRPOTrainer.train

    def spy(trainer, *args, **kwargs):
        trainers.append(trainer)
        return train(trainer, *args, **kwargs)

    monkeypatch.setattr(GRPOTrainer, "train", spy)
    cfg = grpo.AlignGRPOConfig(
        dataset=align_data_config,
        model=ModelConfig(path=str(extended_dir), dtype="bfloat16", freeze_vision=False),
        training=TrainingConfig(output_dir=tmp_path / "grpo", max_steps=2, per_device_train_batch_size=4,
                                logging_steps=1, save_steps=1000),
        grpo=grpo.GRPOSection(num_generations=4, max_completion_length=8),
    )
    grpo.train(cfg)
    trainer = trainers[0]
    assert trainer.args.bf16 and trainer.accelerator.native_amp  # accelerate's autocast wraps the forward
    assert {p.dtype for p in trainer.ref_model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}
    assert {s["exp_avg"].dtype for s in trainer.optimizer.state.values()} == {torch.float32}
    assert trainer.accelerator.unwrap_model(trainer.model).is_gradient_checkpointing


def test_the_kl_reference_is_loaded_in_the_compute_dtype():
    from lerobot_roboalign.align import grpo

    for dtype, reference in (("bfloat16", torch.bfloat16), ("float32", torch.float32)):
        cfg = grpo.AlignGRPOConfig(model=ModelConfig(dtype=dtype))
        # TRL builds the reference from model_init_kwargs: in bf16 from the start, no float32 copy on the way
        assert grpo.grpo_args(cfg).model_init_kwargs == {"dtype": reference, "attn_implementation": "sdpa"}
    assert TrainingConfig().gradient_checkpointing


ZERO3_LAUNCH = {  # what `accelerate launch --config_file examples/accelerate/deepspeed_zero3.yaml` sets per rank
    "ACCELERATE_USE_DEEPSPEED": "true",
    "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3",
    "ACCELERATE_DEEPSPEED_ZERO3_INIT": "true",
}


class Loaded(Exception):
    """Raised by the patched from_pretrained: the test needs nothing after it."""


@pytest.fixture
def zero3_seen_at_load(monkeypatch) -> list[bool]:
    """Under a ZeRO-3 launch, whether ZeRO-3 init was active (trainer config built) when a model was loaded."""
    pytest.importorskip("deepspeed")
    from accelerate.state import AcceleratorState
    from transformers.integrations import is_deepspeed_zero3_enabled

    for name, value in ZERO3_LAUNCH.items():
        monkeypatch.setenv(name, value)
    seen = []

    def from_pretrained(*args, **kwargs):
        seen.append(is_deepspeed_zero3_enabled())
        raise Loaded

    monkeypatch.setattr(common.AutoModelForImageTextToText, "from_pretrained", from_pretrained)
    assert not is_deepspeed_zero3_enabled()
    yield seen
    AcceleratorState._reset_state(reset_partial_state=True)


def test_sft_builds_its_trainer_config_before_the_model(zero3_seen_at_load, tiny_qwen25_backbone, align_data_config,
                                                       tmp_path):
    cfg = AlignSFTConfig(dataset=align_data_config, model=ModelConfig(path=str(tiny_qwen25_backbone)),
                         training=TrainingConfig(output_dir=tmp_path))
    with pytest.raises(Loaded):
        sft.train(cfg)
    assert zero3_seen_at_load == [True]  # from_pretrained ran under deepspeed.zero.Init: loaded partitioned


def test_grpo_builds_its_trainer_config_before_the_model(zero3_seen_at_load, extended_dir, align_data_config,
                                                        tmp_path):
    from lerobot_roboalign.align import grpo

    cfg = grpo.AlignGRPOConfig(dataset=align_data_config, model=ModelConfig(path=str(extended_dir)),
                               training=TrainingConfig(output_dir=tmp_path, per_device_train_batch_size=5),
                               grpo=grpo.GRPOSection(max_completion_length=0))
    with pytest.raises(Loaded):
        grpo.train(cfg)
    assert zero3_seen_at_load == [True]


PAPER_GRPO = Path(__file__).parents[2] / "examples" / "paper" / "align_grpo.json"


def test_the_papers_grpo_batching_and_vllm_colocate_reach_trl():
    from lerobot_roboalign.align import grpo

    cfg = draccus.parse(config_class=grpo.AlignGRPOConfig, args=[f"--config_path={PAPER_GRPO}"])
    args = grpo.grpo_args(cfg)
    assert (args.num_generations, args.generation_batch_size) == (5, 512 * 5)  # rollout: 512 prompts x 5
    gpus = 8
    update = args.per_device_train_batch_size * args.gradient_accumulation_steps * gpus
    assert update == 128 * 5  # update batch: 128 prompts x 5 completions
    assert args.generation_batch_size // update == 4  # 4 optimizer steps per rollout
    assert (args.use_vllm, args.vllm_mode, args.vllm_enable_sleep_mode) == (True, "colocate", True)
    assert args.vllm_gpu_memory_utilization == cfg.grpo.vllm_gpu_memory_utilization
    assert (args.learning_rate, args.lr_scheduler_type, args.beta, args.top_p) == (1e-6, "constant", 0.01, 0.99)
    assert args.gradient_checkpointing
    sft_recipe = draccus.parse(config_class=AlignSFTConfig, args=[f"--config_path={PAPER_GRPO.parent / 'align_sft.json'}"])
    kwargs = sft_recipe.training.trainer_kwargs(sft_recipe.model.precision())
    assert (kwargs["learning_rate"], kwargs["lr_scheduler_type"], kwargs["warmup_ratio"]) == (2e-5, "cosine", 0.03)
    assert sft_recipe.model.freeze_vision and kwargs["gradient_checkpointing"]


def test_grpo_with_vllm_requested_but_missing_says_how_to_install_it(tmp_path, monkeypatch):
    from lerobot_roboalign.align import grpo

    trl_imports = importlib.import_module("trl.import_utils")  # trl's lazy module has no attribute for it
    monkeypatch.setattr(trl_imports, "is_vllm_available", lambda *args, **kwargs: False)
    cfg = grpo.AlignGRPOConfig(model=ModelConfig(path=str(tmp_path / "missing")),
                               training=TrainingConfig(output_dir=tmp_path), grpo=grpo.GRPOSection(use_vllm=True))
    with pytest.raises(ImportError, match=r"lerobot_policy_roboalign\[vllm\]"):
        grpo.train(cfg)  # before the (missing) model is looked for
