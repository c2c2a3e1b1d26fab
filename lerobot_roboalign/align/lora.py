"""One-GPU alignment: LoRA or QLoRA adapters on the language model, merged into a full backbone at the end.

``--lora.enabled=true`` hands TRL's trainers a peft ``LoraConfig`` (TRL's own peft integration): low-rank
adapters on the language model's linear layers (never the vision tower, never the LM head, whose weight TRL's
fused loss reads directly), and the rows of the action tokens (``<ACTION_START>``, ``<ACTION_END>``, the FAST
tokens) of the input embeddings and of an untied LM head trained in full through peft's
``trainable_token_indices``: every other row and weight stays as loaded. The base is frozen in the compute dtype
(bfloat16 on a GPU); ``--lora.quantize=4bit`` loads it in 4 bits instead (QLoRA: bitsandbytes NF4 with double
quantisation, bfloat16 compute, ``prepare_model_for_kbit_training``). Trained parameters are float32 master
weights, as in every run (``precision.py``).

At the end the adapter is written to ``<output_dir>/adapter`` and merged into the base reloaded in float32 (not
into the 4-bit copy, whose rounding would be merged too), so ``<output_dir>/model`` is the same full backbone
directory a full run writes: weights, processor, ``action_vocab.json``, ``fast_tokenizer/``,
``roboalign_format.json``. ``align grpo --lora.enabled=true`` starts from that merged SFT model; its KL reference
is the same model with the adapter disabled (TRL), so no second copy is held.

    roboalign align sft --model.path=Qwen/Qwen2.5-VL-3B-Instruct --lora.enabled=true --lora.r=16 ...
    roboalign align sft --model.path=Qwen/Qwen2.5-VL-7B-Instruct --lora.enabled=true --lora.quantize=4bit ...
"""

import importlib.util
import logging
import re
from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from lerobot_roboalign.action_vocab import ACTION_VOCAB_FILE, ActionVocabulary
from lerobot_roboalign.align.common import (
    VISION_MODULE_NAMES,
    FINAL_SUBDIR,
    finish_training,
    load_model_and_processor,
    model_source,
    save_final,
)
from lerobot_roboalign.align.config import LoRASection, ModelConfig
from lerobot_roboalign.alignment_format import AlignmentFormat
from lerobot_roboalign.hub import push_backbone
from lerobot_roboalign.precision import cast_trainable

logger = logging.getLogger(__name__)

ADAPTER_SUBDIR = "adapter"
ADAPTER_CONFIG = "adapter_config.json"


def target_pattern(names: list[str] | tuple[str, ...]) -> str:
    """peft's regex (full match) for the named linear layers outside the vision tower."""
    vision = "|".join(VISION_MODULE_NAMES)
    return rf"^(?!(?:.*\.)?(?:{vision})\.).*\.(?:{'|'.join(map(re.escape, names))})$"


def action_token_ids(vocabulary: ActionVocabulary) -> list[int]:
    return [vocabulary.start_id, vocabulary.end_id, *vocabulary.action_ids.tolist()]


def tied_embeddings(model: torch.nn.Module) -> bool:
    output = model.get_output_embeddings()
    return output is None or output.weight is model.get_input_embeddings().weight


def peft_config(section: LoRASection, model: torch.nn.Module, vocabulary: ActionVocabulary):
    """The ``LoraConfig`` TRL's trainers wrap the model with: adapters plus the action tokens' rows in full.

    A tied LM head shares the embedding rows (peft ties them); an untied one gets its own rows.
    """
    from peft import LoraConfig

    ids = action_token_ids(vocabulary)
    rows = {"embed_tokens": ids} if tied_embeddings(model) else {"embed_tokens": ids, "lm_head": list(ids)}
    return LoraConfig(
        r=section.r,
        lora_alpha=section.alpha,
        lora_dropout=section.dropout,
        target_modules=target_pattern(section.target_modules),
        trainable_token_indices=rows,
        task_type="CAUSAL_LM",
    )


def check_bitsandbytes(section: LoRASection) -> None:
    """``--lora.quantize=4bit`` without bitsandbytes: say so before any model is loaded."""
    if section.enabled and section.quantize == "4bit" and importlib.util.find_spec("bitsandbytes") is None:
        raise ImportError(
            "--lora.quantize=4bit needs bitsandbytes, which is not installed: pip install "
            "'lerobot_policy_roboalign[qlora]', or drop --lora.quantize for LoRA on a bfloat16 base."
        )


def quantization_config(section: LoRASection):
    """QLoRA's 4-bit base: NF4 with double quantisation, bfloat16 compute (the QLoRA paper's settings)."""
    from transformers import BitsAndBytesConfig

    if section.quantize != "4bit":
        return None
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def check_start(path: str) -> None:
    """An adapter directory is not a backbone: point at the merged model written next to it."""
    if (Path(path) / ADAPTER_CONFIG).is_file():
        merged = Path(path).parent / FINAL_SUBDIR
        raise ValueError(
            f"--model.path={path} is a LoRA adapter, not a backbone. Fix: pass the merged backbone of the same run, "
            f"--model.path={merged} (every LoRA run writes it next to its adapter)."
        )


def load_for_training(cfg: ModelConfig, section: LoRASection, checkpoint: str | None = None):
    """Model and processor to train: float32 weights for a full run, a frozen (or 4-bit) base under LoRA.

    A LoRA checkpoint holds only the adapter: the base is rebuilt from ``cfg.path`` and the trainer restores it.
    """
    if not section.enabled:
        return load_model_and_processor(cfg, checkpoint, training=True)
    check_bitsandbytes(section)
    source = model_source(cfg, checkpoint)
    quantization = quantization_config(section)
    dtype = torch.bfloat16 if quantization is not None else cfg.precision().frozen
    model = AutoModelForImageTextToText.from_pretrained(source, dtype=dtype, quantization_config=quantization)
    model.config.name_or_path = cfg.path
    return model, AutoProcessor.from_pretrained(source)


def prepare(model: torch.nn.Module, section: LoRASection, gradient_checkpointing: bool) -> torch.nn.Module:
    """QLoRA: peft's ``prepare_model_for_kbit_training`` (float32 norms and embeddings, input grads)."""
    if section.quantize != "4bit":
        return model
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                           gradient_checkpointing_kwargs={"use_reentrant": False})


def trainer_kwargs(section: LoRASection, model: torch.nn.Module, vocabulary: ActionVocabulary) -> dict:
    """What the trainer is given for LoRA (nothing for a full run)."""
    return {"peft_config": peft_config(section, model, vocabulary)} if section.enabled else {}


def finish_setup(trainer, section: LoRASection) -> None:
    """After TRL wrapped the model: float32 trained parameters, and the LM head's bias where TRL's loss reads it.

    TRL casts QLoRA's trained parameters to bfloat16, where small steps vanish (``precision.py``). TRL's fused loss
    reads ``lm_head.bias``, which peft's wrapper of the LM head's trainable rows does not pass through (peft 0.21
    forwards only ``weight``); a head without bias gets an explicit ``None``.
    """
    if not section.enabled:
        return
    cast_trainable(trainer.model)
    head = trainer.model.get_output_embeddings()
    original = getattr(head, "original_module", None)
    if original is not None and original.bias is None:
        head.bias = None


def merge_adapter(base: str, adapter: Path, vocabulary: ActionVocabulary) -> torch.nn.Module:
    """``base`` in float32 with its action vocabulary as in training, then the adapter merged into it."""
    from peft import PeftModel

    model = AutoModelForImageTextToText.from_pretrained(base, dtype=torch.float32)
    if not (Path(base) / ACTION_VOCAB_FILE).is_file():  # the same rows and ids the run added (the mean row)
        processor = AutoProcessor.from_pretrained(base)
        added = ActionVocabulary.extend(model, processor.tokenizer, vocabulary.fast_tokenizer)
        if action_token_ids(added) != action_token_ids(vocabulary):
            raise ValueError(f"Re-extending {base} gave other action token ids than the run's: cannot merge.")
    return PeftModel.from_pretrained(model, adapter).merge_and_unload()


def finish(trainer, processor, vocabulary: ActionVocabulary, output_dir: Path, fmt: AlignmentFormat,
           push_to_hub: str | None, cfg: ModelConfig, section: LoRASection) -> Path:
    """A full run's save, or: the adapter to ``adapter/``, merged into the float32 base, saved like a full run."""
    if not section.enabled:
        return finish_training(trainer, processor, vocabulary, output_dir, fmt, push_to_hub)
    final = output_dir / FINAL_SUBDIR
    if trainer.accelerator.is_main_process:
        adapter = output_dir / ADAPTER_SUBDIR
        trainer.accelerator.unwrap_model(trainer.model_wrapped).save_pretrained(adapter)
        processor.save_pretrained(adapter)
        vocabulary.save_pretrained(adapter)
        fmt.save_pretrained(adapter)
        merged = merge_adapter(cfg.path, adapter, vocabulary)
        save_final(merged, processor, vocabulary, output_dir, fmt)
        logger.info("Adapter in %s merged into %s (float32).", adapter, final)
        if push_to_hub:
            push_backbone(final, push_to_hub)
    trainer.accelerator.wait_for_everyone()
    return final


def adapter_parameters(model: torch.nn.Module, r: int, targets: list[str] | tuple[str, ...]) -> tuple[int, int]:
    """(LoRA parameters at rank ``r``, parameters bitsandbytes quantizes) of ``model``, meta or real.

    bitsandbytes quantizes every linear layer but the LM head (the vision tower's too); embeddings, norms and
    the LM head stay unquantized (float32 after ``prepare_model_for_kbit_training``).
    """
    pattern = target_pattern(targets)
    output = model.get_output_embeddings()
    adapters = quantized = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and module is not output:
            quantized += module.weight.numel()
            if re.fullmatch(pattern, name):
                adapters += r * (module.in_features + module.out_features)
    return adapters, quantized
