"""``roboalign align sft``: stage 1, supervised fine-tuning on reasoning + FAST action tokens (TRL SFTTrainer).

Each sample is a prompt (camera images, task) and the completion
``<think>reasoning</think><answer><ACTION_START>...<ACTION_END></answer>``; the loss is on the completion
only. The vision encoder is frozen and the defaults are the paper's (lr 2e-5, cosine, warmup 0.03, 1 epoch).
A backbone without the action vocabulary gets it here (``ActionVocabulary.extend``), and without a FAST
tokenizer one is fitted on the sampled chunks. Optional VQA data in LLaVA's JSON conversation format is
mixed in at ``--vqa.ratio`` VQA samples per action sample (the paper: 1.88M VQA to 400K action samples).

    roboalign align sft --dataset.repo_ids='[me/so101]' --dataset.roots='[data/so101]' \
        --model.path=Qwen/Qwen2.5-VL-7B-Instruct --reasoning=reasoning.jsonl --training.output_dir=out/sft
"""

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
from datasets import Dataset

from lerobot_roboalign.action_vocab import ACTION_VOCAB_FILE, ActionVocabulary
from lerobot_roboalign.align import commands, lora
from lerobot_roboalign.align.common import (
    MetricsCallback,
    VocabularyCallback,
    freeze_vision_encoder,
    last_complete_checkpoint,
    load_fast_tokenizer,
    model_source,
)
from lerobot_roboalign.align.config import AlignSFTConfig, ModelConfig
from lerobot_roboalign.align.data import (
    AlignSamples,
    attach_fast_tokens,
    load_samples,
    sft_dataset,
)
from lerobot_roboalign.align.launch import check_launch
from lerobot_roboalign.align.reason import ScriptedReasoning, describe_motion, read_reasoning
from lerobot_roboalign.align.vqa import vqa_references
from lerobot_roboalign.alignment_format import AlignmentFormat
from lerobot_roboalign.fast import FastTokenizer
from lerobot_roboalign.hub import check_repo_id

logger = logging.getLogger(__name__)


def attach_action_vocabulary(model, processor, fast: FastTokenizer, path: str) -> ActionVocabulary:
    """The backbone's own action vocabulary, or a new one added to its tokenizer and embeddings."""
    if (Path(path) / ACTION_VOCAB_FILE).is_file():
        return ActionVocabulary.from_pretrained(path, tokenizer=processor.tokenizer)
    logger.info("Extending %s with %d FAST action tokens.", path, fast.vocab_size)
    return ActionVocabulary.extend(model, processor.tokenizer, fast)


def refuse_other_fast_tokenizer(cfg: ModelConfig, source: str) -> None:
    """A backbone with action tokens keeps their FAST tokenizer: checked before anything large is loaded."""
    if cfg.fast_tokenizer and (Path(source) / ACTION_VOCAB_FILE).is_file():
        vocabulary = ActionVocabulary.from_pretrained(source)
        vocabulary.check_fast_tokenizer(FastTokenizer.from_pretrained(cfg.fast_tokenizer), cfg.fast_tokenizer, source)


def samples_with_tokens(cfg: AlignSFTConfig, source: str) -> tuple[list[dict], FastTokenizer]:
    """Samples with FAST tokens, from the given (or ``source``'s) tokenizer or one fitted on the sampled chunks
    (none under ``--vqa.only``: the tokenizer is then only the vocabulary the backbone keeps for alignment)."""
    fast = load_fast_tokenizer(replace(cfg.model, path=source))
    if cfg.vqa.only:
        return no_action_samples(cfg, fast), fast
    samples = load_samples(cfg.dataset, fast)
    if fast is None:
        logger.info("No FAST tokenizer given: fitting one (vocab %d) on %d chunks.", cfg.fast_vocab_size, len(samples))
        fast = FastTokenizer.fit(np.stack([s["actions"] for s in samples]), vocab_size=cfg.fast_vocab_size)
        attach_fast_tokens(samples, fast)
    return samples, fast


def no_action_samples(cfg: AlignSFTConfig, fast: FastTokenizer | None) -> AlignSamples:
    """A VQA-only run's (empty) action samples, once its options are checked."""
    if cfg.dataset.repo_ids:
        raise ValueError(
            "--vqa.only=true trains on the VQA file alone, but --dataset.repo_ids is given. Fix: drop --dataset.* "
            "(or --vqa.only to mix VQA into action samples with --vqa.ratio)."
        )
    if fast is None:
        raise ValueError(
            "--vqa.only=true still gives the backbone the action vocabulary the alignment after it trains: pass "
            "--model.fast_tokenizer=DIR (`roboalign tokenizer fit` on the alignment corpus)."
        )
    empty = np.zeros(0, dtype=np.int64)
    return AlignSamples([], empty, empty, cfg.dataset.image_size, fast)


def reasoning_texts(samples: list[dict], path: Path | None) -> list[str]:
    if path is None:
        logger.warning("No --reasoning file: using scripted motion descriptions (run `roboalign align reason`).")
        return ScriptedReasoning(describe_motion)(samples)
    rows = read_reasoning(path)
    missing = [s["id"] for s in samples if s["id"] not in rows]
    if missing:
        raise ValueError(
            f"{len(missing)} of {len(samples)} samples have no reasoning in {path} (first: {missing[0]}). Fix: run "
            "`roboalign align reason` with the same --dataset.* options (it resumes and fills the gaps)."
        )
    return [rows[s["id"]]["reasoning"] for s in samples]


def build_dataset(cfg: AlignSFTConfig, samples: AlignSamples, vocabulary: ActionVocabulary) -> Dataset:
    """Action then VQA rows as references (images decode in the data loader), shuffled."""
    count = None if cfg.vqa.only else round(cfg.vqa.ratio * len(samples))
    vqa = vqa_references(cfg.vqa, count, cfg.dataset.seed)
    reasoning = reasoning_texts(samples, cfg.reasoning) if len(samples) else []
    return sft_dataset(samples, reasoning, vocabulary, vqa).shuffle(seed=cfg.dataset.seed)


def train(cfg: AlignSFTConfig) -> Path:
    """Run SFT (resuming from the last complete checkpoint) and return the final model directory."""
    from trl import SFTConfig, SFTTrainer

    if cfg.push_to_hub:
        check_repo_id(cfg.push_to_hub)  # before hours of training, not after
    lora.check_start(cfg.model.path)
    resume = last_complete_checkpoint(cfg.training.output_dir) if cfg.training.resume else None
    refuse_other_fast_tokenizer(cfg.model, resume or cfg.model.path)
    # The trainer config before the model: under accelerate it switches on ZeRO-3 init / FSDP's cpu-ram-efficient
    # loading, so that from_pretrained below already loads sharded.
    args = SFTConfig(**cfg.training.trainer_kwargs(cfg.model.precision()), completion_only_loss=True, max_length=cfg.max_length)
    model, processor = lora.load_for_training(cfg.model, cfg.lora, resume)
    samples, fast = samples_with_tokens(cfg, resume or cfg.model.path)
    vocabulary = attach_action_vocabulary(model, processor, fast, model_source(cfg.model, resume))
    model = lora.prepare(model, cfg.lora, cfg.training.gradient_checkpointing)
    if cfg.model.freeze_vision and not cfg.lora.enabled:  # under LoRA only the adapter and action rows train
        freeze_vision_encoder(model)
    fmt = AlignmentFormat.from_data_config(cfg.dataset)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=build_dataset(cfg, samples, vocabulary),
        processing_class=processor,
        callbacks=[MetricsCallback(cfg.training.output_dir), VocabularyCallback(vocabulary, fmt)],
        **lora.trainer_kwargs(cfg.lora, model, vocabulary),
    )
    lora.finish_setup(trainer, cfg.lora)
    trainer.train(resume_from_checkpoint=resume)
    return lora.finish(trainer, processor, vocabulary, cfg.training.output_dir, fmt, cfg.push_to_hub, cfg.model, cfg.lora)


def run(cfg: AlignSFTConfig) -> Path:
    check_launch()
    final = train(cfg)
    print(f"SFT model written to {final}")
    return final


main = commands.main_sft  # parses before this module's imports (align/commands.py): --help stays fast
