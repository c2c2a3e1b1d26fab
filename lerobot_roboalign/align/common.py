"""What the SFT and GRPO stages share: model loading, checkpoints, metrics (their config sections: config.py).

Both stages hand their loops to TRL/transformers trainers; this module only adds the RoboAlign-specific
parts around them: the extended action vocabulary, the frozen vision encoder, a resume that skips a
half-written checkpoint (and rebuilds the model of a sharded one), an atomically written float32 final model
gathered from every rank, and a CSV + PNG of the logged metrics.
"""

import csv
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from lerobot_roboalign.action_vocab import ACTION_VOCAB_FILE, FAST_TOKENIZER_DIR, ActionVocabulary
from lerobot_roboalign.align.config import ModelConfig
from lerobot_roboalign.alignment_format import AlignmentFormat
from lerobot_roboalign.backbone import check_reachable
from lerobot_roboalign.fast import FastTokenizer
from lerobot_roboalign.hub import push_backbone

logger = logging.getLogger(__name__)

FINAL_SUBDIR = "model"
METRICS_CSV = "metrics.csv"
METRICS_PNG = "metrics.png"
VISION_MODULE_NAMES = ("visual", "vision_tower", "vision_model")


def holds_model(checkpoint: str | Path) -> bool:
    """Whether a trainer checkpoint holds a whole HF model (config + weights).

    Checkpoints of one process, DDP and ZeRO-2 do; FSDP's sharded ones hold only DCP shards (and ZeRO-3's hold
    DeepSpeed's partitions unless it gathers 16-bit weights): the trainer restores those on resume.
    """
    path = Path(checkpoint)
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def model_source(cfg: ModelConfig, checkpoint: str | None) -> str:
    """Where the model is built from: the checkpoint when it holds a whole model, else ``cfg.path``."""
    if checkpoint is None or holds_model(checkpoint):
        return checkpoint or cfg.path
    logger.info("%s holds sharded weights: building the model from %s; the trainer restores the checkpoint's.",
                checkpoint, cfg.path)
    return cfg.path


def load_model_and_processor(cfg: ModelConfig, checkpoint: str | None = None, training: bool = False,
                             flag: str = "--model.path"):
    """Model and processor of ``cfg.path``, or of a trainer ``checkpoint`` of it when resuming.

    For ``training`` the weights are float32 master weights and the trainer's autocast gives the compute dtype;
    for inference (reasoning, scoring, generate) they are loaded in the compute dtype (see ``precision.py``).
    Training builds its trainer config first, so that this load is already sharded where the launch asks for
    it (DeepSpeed ZeRO-3 init, FSDP's cpu-ram-efficient loading).

    Resumed weights are loaded here with ``from_pretrained`` (which maps the saved key names back), because
    transformers' own resume loads the state dict verbatim and misses the renamed keys of Qwen-VL models; a
    sharded checkpoint is rebuilt from ``cfg.path`` and restored by the trainer (:func:`model_source`).
    The config keeps naming ``cfg.path``, so GRPO's KL reference stays the starting model on resume.
    """
    source = model_source(cfg, checkpoint)
    check_reachable(source, flag, what="Model")
    precision = cfg.precision()
    dtype = precision.load if training else precision.frozen
    model = AutoModelForImageTextToText.from_pretrained(source, dtype=dtype, attn_implementation=cfg.attn_implementation)
    processor = AutoProcessor.from_pretrained(source)
    model.config.name_or_path = cfg.path
    return model, processor


def load_fast_tokenizer(cfg: ModelConfig) -> FastTokenizer | None:
    """The explicitly given FAST tokenizer, else the one stored in the backbone dir, else None."""
    if cfg.fast_tokenizer:
        return FastTokenizer.from_pretrained(cfg.fast_tokenizer)
    inside = Path(cfg.path) / FAST_TOKENIZER_DIR
    return FastTokenizer.from_pretrained(inside) if inside.is_dir() else None


def freeze_vision_encoder(model: torch.nn.Module) -> int:
    """Freeze the vision tower (paper: vision encoder frozen during SFT); returns the frozen parameter count."""
    frozen = 0
    for name, param in model.named_parameters():
        if any(part in VISION_MODULE_NAMES for part in name.split(".")):
            param.requires_grad_(False)
            frozen += getattr(param, "ds_numel", param.numel())  # ZeRO-3 partitions hold 0 elements here
    if frozen == 0:
        raise ValueError(
            f"Found no vision encoder in {type(model).__name__} (looked for modules named {VISION_MODULE_NAMES}); "
            "pass --model.freeze_vision=false to train all parameters."
        )
    return frozen


def last_complete_checkpoint(output_dir: Path) -> str | None:
    """The newest ``checkpoint-N`` that was fully written; a half-written one (killed mid-save) is deleted.

    transformers writes ``trainer_state.json`` last and :class:`VocabularyCallback` then adds
    ``action_vocab.json``, so the presence of both marks a complete checkpoint.
    """
    if not output_dir.is_dir():
        return None
    checkpoints = sorted(
        (p for p in output_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
    )
    for path in reversed(checkpoints):
        if (path / "trainer_state.json").is_file() and (path / ACTION_VOCAB_FILE).is_file():
            return str(path)
        logger.warning("Removing incomplete checkpoint %s (the run was killed while saving it).", path)
        shutil.rmtree(path, ignore_errors=True)  # every rank decides the same and deletes it
    return None


def save_final(
    model,
    processor,
    vocabulary: ActionVocabulary,
    output_dir: Path,
    fmt: AlignmentFormat | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write the aligned MLLM to ``output_dir/model`` atomically: a temp dir renamed in one step.

    The result is a standard HF checkpoint (AutoModelForImageTextToText + AutoProcessor) that also holds the
    FAST tokenizer and action vocabulary, so the VLA and ``roboalign align generate`` load it by path, and the
    input format it was aligned on (``fmt``), which the VLA shows it by default. ``state_dict`` replaces the
    model's own (a sharded model's gathered weights, :func:`gather_full_state_dict`).
    """
    final = output_dir / FINAL_SUBDIR
    staging = Path(tempfile.mkdtemp(prefix=f".{FINAL_SUBDIR}.", dir=output_dir))
    try:
        model.save_pretrained(staging, state_dict=state_dict)
        processor.save_pretrained(staging)
        vocabulary.save_pretrained(staging)  # action_vocab.json + fast_tokenizer/
        (fmt or AlignmentFormat()).save_pretrained(staging)
        if final.exists():
            old = final.with_name(f".{FINAL_SUBDIR}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(staging, final)
            shutil.rmtree(old)
        else:
            os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def gather_full_state_dict(trainer) -> dict[str, torch.Tensor] | None:
    """The whole trained model as float32 CPU tensors on the main process (``{}`` elsewhere); None when unsharded.

    A collective under FSDP and DeepSpeed: every rank must call it. FSDP gathers its DTensor shards
    (accelerate's ``get_state_dict``). DeepSpeed's module holds 16-bit weights (partitioned under ZeRO-3, gathered
    to the main process's CPU), so the trained ones are replaced by the optimizer's float32 masters
    (:func:`deepspeed_master_weights`); only the main process keeps a copy.
    """
    accelerator = trainer.accelerator
    if not (trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled):
        return None  # every process holds the whole float32 model
    main = accelerator.is_main_process
    engine = trainer.model_wrapped
    if trainer.is_deepspeed_enabled and engine.zero_optimization_stage() < 3:
        state = engine.module.state_dict() if main else {}  # replicated: references, no copy on the GPU
    else:
        state = accelerator.get_state_dict(engine) or {}  # ZeRO-3: None off the main process
    if trainer.is_deepspeed_enabled:
        state.update(deepspeed_master_weights(engine, keep=main))
    return {key: value.to("cpu", torch.float32) if value.is_floating_point() else value.cpu()
            for key, value in state.items()}


def deepspeed_master_weights(engine, keep: bool) -> dict[str, torch.Tensor]:
    """The optimizer's full float32 copy of every trained parameter, on the CPU where ``keep``.

    A collective (each parameter is gathered from the ranks' partitions): every rank calls it.
    """
    from deepspeed.utils import safe_get_full_fp32_param

    masters = {}
    for name, param in engine.module.named_parameters():
        if param.requires_grad:
            master = safe_get_full_fp32_param(param)
            if keep and master is not None:
                masters[name] = master.cpu()
    return masters


def finish_training(trainer, processor, vocabulary: ActionVocabulary, output_dir: Path, fmt: AlignmentFormat,
                    push_to_hub: str | None) -> Path:
    """Gather the model on every rank, then write (and push) it from the main process; the others wait for it.

    One writer: ranks renaming into the same directory would collide.
    """
    final = output_dir / FINAL_SUBDIR
    state_dict = gather_full_state_dict(trainer)
    if trainer.accelerator.is_main_process:
        model = trainer.accelerator.unwrap_model(trainer.model_wrapped)
        save_final(model, processor, vocabulary, output_dir, fmt, state_dict=state_dict)
        if push_to_hub:
            push_backbone(final, push_to_hub)
    trainer.accelerator.wait_for_everyone()
    return final


class VocabularyCallback(TrainerCallback):
    """Store the action vocabulary, FAST tokenizer and input format in every checkpoint.

    A checkpoint with a whole model (one process, DDP, ZeRO-2, ZeRO-3 with 16-bit gathering) is then a usable
    backbone; FSDP's sharded ones are for resuming (the final ``model/`` is always whole, in float32).
    """

    def __init__(self, vocabulary: ActionVocabulary, fmt: AlignmentFormat | None = None):
        self.vocabulary = vocabulary
        self.fmt = fmt or AlignmentFormat()

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            checkpoint = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            self.fmt.save_pretrained(checkpoint)
            self.vocabulary.save_pretrained(checkpoint)  # action_vocab.json last: it marks the checkpoint complete


class MetricsCallback(TrainerCallback):
    """Mirror the trainer's log history to ``metrics.csv`` at each log and plot it to ``metrics.png`` at the end.

    The CSV is rewritten from ``state.log_history`` (restored from the checkpoint on resume), so a resumed
    run's CSV holds exactly the steps it would have logged without the interruption.
    """

    def __init__(self, output_dir: Path):
        self.output_dir = Path(output_dir)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero:
            write_metrics_csv(state.log_history, self.output_dir / METRICS_CSV)

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero and state.log_history:
            write_metrics_csv(state.log_history, self.output_dir / METRICS_CSV)
            plot_metrics(state.log_history, self.output_dir / METRICS_PNG)


def write_metrics_csv(history: list[dict], path: Path) -> None:
    columns = sorted({key for row in history for key in row}, key=lambda k: (k != "step", k))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)
    os.replace(tmp, path)


def plot_metrics(history: list[dict], path: Path) -> None:
    """One panel per numeric metric against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    skip = {"step", "epoch", "total_flos", "train_runtime"}
    keys = sorted({k for row in history for k, v in row.items() if isinstance(v, int | float) and k not in skip})
    keys = [k for k in keys if sum(k in row for row in history) > 1] or keys
    columns = min(3, len(keys)) or 1
    rows = (len(keys) + columns - 1) // columns or 1
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3 * rows), squeeze=False)
    for axis, key in zip(axes.flat, keys):
        points = [(row["step"], row[key]) for row in history if key in row and "step" in row]
        axis.plot(*zip(*points), marker=".")
        axis.set_title(key, fontsize=9)
        axis.set_xlabel("step")
    for axis in list(axes.flat)[len(keys):]:
        axis.axis("off")
    figure.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    figure.savefig(tmp, dpi=100)
    plt.close(figure)
    os.replace(tmp, path)


def stop_token_ids(tokenizer, generation_config=None) -> set[int]:
    """Ids that end a completion (EOS of the tokenizer and of the generation config, padding)."""
    ids = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    eos = getattr(generation_config, "eos_token_id", None)
    ids.update(eos if isinstance(eos, list) else [eos])
    return {i for i in ids if i is not None}


@torch.no_grad()
def generate_completions(
    model,
    processor,
    messages: list[list[dict]],
    images: list[list],
    max_new_tokens: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
) -> list[list[int]]:
    """Completion token ids for a batch of chat prompts with their images (left padding, as TRL generates)."""
    from trl.data_utils import prepare_multimodal_messages

    conversations = [prepare_multimodal_messages(m, images=i) for m, i in zip(messages, images, strict=True)]
    processor.tokenizer.padding_side = "left"
    inputs = processor.apply_chat_template(
        conversations, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt", padding=True
    ).to(model.device)
    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p) if do_sample else dict(do_sample=False)
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, **sampling)
    stop = stop_token_ids(processor.tokenizer, model.generation_config)
    completions = []
    for row in output[:, inputs["input_ids"].shape[1]:].tolist():
        cut = next((i + 1 for i, token in enumerate(row) if token in stop), len(row))
        completions.append(row[:cut])
    return completions
