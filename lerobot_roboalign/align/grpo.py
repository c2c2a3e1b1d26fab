"""``roboalign align grpo``: stage 2, GRPO on FAST action tokens with TRL's GRPOTrainer.

Offline RL as in the paper: no environment, each prompt's completions are scored against the dataset's
own FAST tokens with r = (r_format + r_action) / 2 (see ``rewards.py`` for the edge cases). Defaults are
the paper's / EasyR1's: 5 samples per prompt, constant lr 1e-6, KL coefficient 0.01, temperature 1.0,
top_p 0.99, all parameters trained. The model must already speak the action vocabulary (run SFT first).
The paper's rollout batch 512 / update batch 128 (prompts, as EasyR1 counts them) are TRL's
``generation_batch_size`` / update batch in completions: examples/paper/align_grpo.json sets them for 8 GPUs.

    roboalign align grpo --model.path=out/sft/model --dataset.repo_ids='[me/so101]' \
        --dataset.num_samples=12800 --training.output_dir=out/grpo
    accelerate launch --config_file examples/accelerate/deepspeed_zero3.yaml -m lerobot_roboalign.cli \
        align grpo --config_path=examples/paper/align_grpo.json --model.path=out/sft/model ...
"""

import json
import logging
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from transformers import AutoProcessor

from lerobot_roboalign.action_vocab import ActionVocabulary
from lerobot_roboalign.align import commands, lora
from lerobot_roboalign.align.common import (
    MetricsCallback,
    VocabularyCallback,
    freeze_vision_encoder,
    generate_completions,
    last_complete_checkpoint,
    load_model_and_processor,
    model_source,
    stop_token_ids,
)
from lerobot_roboalign.align.config import AlignGRPOConfig, GRPOSection, LoRASection, ModelConfig
from lerobot_roboalign.align.data import (
    AlignSamples,
    align_messages,
    check_completion_cap,
    grpo_dataset,
    load_samples,
    longest_target_tokens,
)
from lerobot_roboalign.align.launch import check_launch, with_whole_reference
from lerobot_roboalign.align.reason import describe_motion, read_reasoning
from lerobot_roboalign.align.rewards import make_reward_funcs, total_rewards
from lerobot_roboalign.alignment_format import AlignmentFormat
from lerobot_roboalign.fast import FastTokenizer
from lerobot_roboalign.hub import check_repo_id

logger = logging.getLogger(__name__)


def load_aligned(
    cfg: ModelConfig, checkpoint: str | None = None, training: bool = False, adapter: LoRASection | None = None
) -> tuple[torch.nn.Module, object, ActionVocabulary, FastTokenizer]:
    """An SFT'd MLLM with its action vocabulary and FAST tokenizer (a clear error when they are missing).

    With ``adapter``, the model to train: a frozen (or 4-bit) base when it is enabled (``lora.py``).
    """
    vocabulary = ActionVocabulary.from_pretrained(checkpoint or cfg.path)
    if adapter is not None:
        model, processor = lora.load_for_training(cfg, adapter, checkpoint)
    else:
        model, processor = load_model_and_processor(cfg, checkpoint, training)
    vocabulary.check_tokenizer(processor.tokenizer)
    return model, processor, vocabulary, vocabulary.fast_tokenizer


def build_dataset(samples: AlignSamples) -> Dataset:
    return grpo_dataset(samples)


def check_vllm(section: GRPOSection) -> None:
    """``--grpo.use_vllm=true`` without vLLM installed: say so before any model is loaded."""
    from trl.import_utils import is_vllm_available

    if section.use_vllm and not is_vllm_available():
        raise ImportError(
            "--grpo.use_vllm=true needs vLLM, which is not installed: pip install 'lerobot_policy_roboalign[vllm]' "
            "on a CUDA machine, or drop --grpo.use_vllm to generate with transformers."
        )


def grpo_args(cfg: AlignGRPOConfig):
    """TRL's GRPOConfig; the KL reference model is loaded in the frozen (compute) dtype (precision.py)."""
    from trl import GRPOConfig

    g = cfg.grpo
    precision = cfg.model.precision()
    return GRPOConfig(
        **cfg.training.trainer_kwargs(precision),
        # only the reference model is built from them here
        model_init_kwargs={"dtype": precision.frozen, "attn_implementation": cfg.model.attn_implementation},
        num_generations=g.num_generations,
        beta=g.beta,
        temperature=g.temperature,
        top_p=g.top_p,
        max_completion_length=g.max_completion_length,
        loss_type=g.loss_type,
        reward_weights=[0.5, 0.5],  # r = (r_format + r_action) / 2
        generation_batch_size=g.generation_batch_size,
        steps_per_generation=g.steps_per_generation,
        use_vllm=g.use_vllm,
        vllm_mode=g.vllm_mode,
        vllm_gpu_memory_utilization=g.vllm_gpu_memory_utilization,
        vllm_enable_sleep_mode=g.vllm_enable_sleep_mode,
    )


def train(cfg: AlignGRPOConfig) -> Path:
    """Run GRPO (resuming from the last complete checkpoint) and return the final model directory."""
    from trl import GRPOTrainer

    if cfg.push_to_hub:
        check_repo_id(cfg.push_to_hub)  # before hours of training, not after
    check_vllm(cfg.grpo)
    lora.check_start(cfg.model.path)
    resume = last_complete_checkpoint(cfg.training.output_dir) if cfg.training.resume else None
    vocabulary = ActionVocabulary.from_pretrained(resume or cfg.model.path)
    samples = load_samples(cfg.dataset, vocabulary.fast_tokenizer)
    processor = AutoProcessor.from_pretrained(model_source(cfg.model, resume))
    cfg.grpo.max_completion_length = completion_cap(cfg, samples, processor.tokenizer, vocabulary)
    # The trainer config before the model: under accelerate it switches on ZeRO-3 init / FSDP's cpu-ram-efficient
    # loading, so that from_pretrained below already loads sharded.
    args = grpo_args(cfg)
    model, processor, vocabulary, fast = load_aligned(cfg.model, resume, training=True, adapter=cfg.lora)
    model = lora.prepare(model, cfg.lora, cfg.training.gradient_checkpointing)
    if cfg.model.freeze_vision and not cfg.lora.enabled:  # under LoRA only the adapter and action rows train
        freeze_vision_encoder(model)
    stop_ids = stop_token_ids(processor.tokenizer, model.generation_config)
    fmt = AlignmentFormat.from_data_config(cfg.dataset)
    trainer = with_whole_reference(cfg.grpo.beta, lambda: GRPOTrainer(
        model=model,
        reward_funcs=make_reward_funcs(cfg.grpo.reward, processor.tokenizer, vocabulary, fast, stop_ids, cfg.grpo.l1_scale),
        args=args,
        train_dataset=build_dataset(samples),
        processing_class=processor,
        callbacks=[MetricsCallback(cfg.training.output_dir), VocabularyCallback(vocabulary, fmt)],
        **lora.trainer_kwargs(cfg.lora, model, vocabulary),
    ))
    lora.finish_setup(trainer, cfg.lora)
    trainer.train(resume_from_checkpoint=resume)
    return lora.finish(trainer, processor, vocabulary, cfg.training.output_dir, fmt, cfg.push_to_hub, cfg.model, cfg.lora)


COMPLETION_MARGIN = 16


def completion_cap(cfg: AlignGRPOConfig, samples: list[dict], tokenizer, vocabulary: ActionVocabulary) -> int:
    """The configured cap, checked against the longest target, or (cap 0) that length plus a margin."""
    if cfg.reasoning is not None:
        reasoning = {key: row["reasoning"] for key, row in read_reasoning(Path(cfg.reasoning)).items()}
    else:  # what `align sft` trains on without --reasoning
        reasoning = {s["id"]: describe_motion(s) for s in samples}
    longest = longest_target_tokens(samples, reasoning, tokenizer, vocabulary)
    cap = cfg.grpo.max_completion_length or longest + COMPLETION_MARGIN
    if cfg.reasoning is not None:
        check_completion_cap(cap, longest, "--grpo.max_completion_length")
    elif cap < longest:  # the SFT reasoning is unknown: warn, the actual targets may be shorter
        logger.warning("--grpo.max_completion_length=%d may not hold a full target (scripted reasoning: %d tokens); "
                       "pass --reasoning=FILE to check.", cap, longest)
    logger.info("GRPO completion cap: %d tokens (longest target completion: %d).", cap, longest)
    output = Path(cfg.training.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    (output / "completion_cap.json").write_text(json.dumps({"cap": cap, "longest_target": longest}))
    return cap


def score_model(
    model_path: str,
    samples: list[dict],
    num_generations: int = 5,
    temperature: float = 1.0,
    top_p: float = 0.99,
    max_new_tokens: int = 64,
    reward: str = "prefix",
    seed: int = 0,
) -> dict[str, float]:
    """Mean format / action / total reward of sampled completions of ``model_path`` on ``samples``."""
    model, processor, vocabulary, fast = load_aligned(ModelConfig(path=model_path))
    model.eval()
    torch.manual_seed(seed)
    repeated = [s for s in samples for _ in range(num_generations)]
    completion_ids = generate_completions(
        model,
        processor,
        [align_messages(s["task"], s["state"]) for s in repeated],
        [s["images"] for s in repeated],
        max_new_tokens=max_new_tokens,
        do_sample=True,
        temperature=temperature,
        top_p=top_p,
    )
    funcs = make_reward_funcs(reward, processor.tokenizer, vocabulary, fast, stop_token_ids(processor.tokenizer))
    inputs = dict(completions=None, completion_ids=completion_ids, fast_tokens=[s["fast_tokens"] for s in repeated])
    per_func = {func.__name__: float(np.mean(func(**inputs))) for func in funcs}
    return {**per_func, "reward": float(total_rewards(funcs, **inputs).mean())}


def run(cfg: AlignGRPOConfig) -> Path:
    check_launch()
    final = train(cfg)
    print(f"GRPO model written to {final}")
    return final


main = commands.main_grpo  # parses before this module's imports (align/commands.py): --help stays fast
