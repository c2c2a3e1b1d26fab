"""The ``roboalign align`` commands' configs: stdlib only, so a command parses (and prints ``--help``) before
torch, transformers, datasets or LeRobot load; the stage modules import their config from here.

Sections shared by the stages (model, training, dataset, VQA, LoRA) first, then each command's config.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lerobot_roboalign.precision import PrecisionPlan

ATTN_IMPLEMENTATIONS = ("sdpa", "flash_attention_2", "eager")
SPLITS = ("all", "train", "heldout")
LANGUAGE_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
QUANTIZE = ("none", "4bit")
SOURCES = ("mllm", "scripted")
ENGINES = ("hf", "vllm")
STAGES = ("sft", "grpo", "vla")
METHODS = ("full", "lora", "qlora")


@dataclass
class ModelConfig:
    """The MLLM to align: a local checkpoint dir or hub id, and the FAST tokenizer of its action tokens."""

    path: str = "Qwen/Qwen2.5-VL-7B-Instruct"
    # FAST tokenizer dir; default: the backbone's own ``fast_tokenizer/``, else fitted on the datasets (SFT).
    fast_tokenizer: str | None = None
    freeze_vision: bool = True
    # Compute dtype (autocast); trained weights are float32 whatever it is (precision.py). auto: bfloat16 on a
    # CUDA GPU that supports it, float32 elsewhere; bfloat16 on the CPU runs CPU autocast.
    dtype: str = "auto"
    # transformers' attention kernel: sdpa (PyTorch's fused kernels), flash_attention_2 (pip install flash-attn,
    # CUDA), eager (materialises every layer's attention matrix: `align plan` counts it).
    attn_implementation: str = "sdpa"

    def __post_init__(self) -> None:
        check_attn_implementation(self.attn_implementation)

    def precision(self) -> "PrecisionPlan":
        from lerobot_roboalign.precision import align_precision, training_device

        return align_precision(self.dtype, training_device())


@dataclass
class TrainingConfig:
    """Trainer settings; the defaults are the paper's SFT recipe (GRPO overrides lr and scheduler)."""

    output_dir: Path = Path("outputs/align")
    learning_rate: float = 2e-5
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = 0.03
    num_train_epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides num_train_epochs
    # Data loader processes per rank that decode the images while the model trains; None: 2 on a GPU, 0 on the CPU
    # (where they would take the cores training uses). benchmarks/bench_align_data.py measures 0 against 2.
    dataloader_num_workers: int | None = None
    per_device_train_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    logging_steps: int = 10
    save_steps: int = 500
    save_total_limit: int | None = 2
    seed: int = 0
    report_to: list[str] = field(default_factory=lambda: ["none"])  # e.g. ["wandb"]
    gradient_checkpointing: bool = True  # TRL's default: activations of one layer at a time (docs/alignment_at_scale.md)
    resume: bool = True  # continue from the last complete checkpoint in output_dir

    def trainer_kwargs(self, precision: "PrecisionPlan") -> dict:
        """Keyword arguments shared by TRL's SFTConfig and GRPOConfig (mixed precision from ``precision``)."""
        from lerobot_roboalign.precision import training_device

        return dict(
            output_dir=str(self.output_dir),
            learning_rate=self.learning_rate,
            lr_scheduler_type=self.lr_scheduler_type,
            warmup_ratio=self.warmup_ratio,
            num_train_epochs=self.num_train_epochs,
            max_steps=self.max_steps,
            per_device_train_batch_size=self.per_device_train_batch_size,
            gradient_accumulation_steps=self.gradient_accumulation_steps,
            logging_steps=self.logging_steps,
            save_strategy="steps",
            save_steps=self.save_steps,
            save_total_limit=self.save_total_limit,
            seed=self.seed,
            data_seed=self.seed,
            report_to=self.report_to,
            gradient_checkpointing=self.gradient_checkpointing,
            **precision.trainer_flags(training_device()),
            remove_unused_columns=False,
            disable_tqdm=False,
            dataloader_num_workers=self.num_workers(),
        )

    def num_workers(self) -> int:
        from lerobot_roboalign.precision import training_device

        if self.dataloader_num_workers is not None:
            return self.dataloader_num_workers
        return 2 if training_device() == "cuda" else 0


def check_attn_implementation(name: str) -> None:
    """An unknown kernel, or flash_attention_2 without the flash-attn package: say so at parse time."""
    if name not in ATTN_IMPLEMENTATIONS:
        raise ValueError(f"--model.attn_implementation={name!r}: choose one of {ATTN_IMPLEMENTATIONS}.")
    if name != "flash_attention_2":
        return
    from transformers.utils import is_flash_attn_2_available

    if not is_flash_attn_2_available():
        raise ImportError(
            "--model.attn_implementation=flash_attention_2 needs the flash-attn package on a CUDA GPU, which is not "
            "available here: pip install flash-attn --no-build-isolation, or use --model.attn_implementation=sdpa."
        )


@dataclass
class AlignDataConfig:
    """Which LeRobotDatasets, cameras and chunk length the alignment samples come from."""

    repo_ids: list[str] = field(default_factory=list)
    roots: list[str] | None = None  # local dataset roots, one per repo id (offline use)
    # Camera names without the "observation.images." prefix; empty = all cameras of the first dataset.
    cameras: list[str] = field(default_factory=list)
    chunk_size: int = 16  # actions per FAST chunk (paper: 16 at the VLA; FAST encodes the chunk from t)
    num_samples: int | None = None  # frames to sample over all datasets; None = every frame (paper RL: 12800)
    include_state: bool = False  # add the robot state to the prompt as text
    # With include_state: the observation.state entries written, by name (empty = all). Fewer, relevant numbers make
    # a shorter prompt, e.g. the end effector and gripper for actions that move them: '[ee_x,ee_y,ee_z,gripper_pose]'.
    state_names: list[str] = field(default_factory=list)
    image_size: int | None = None  # resize images to a square of this side; None keeps the dataset's size
    seed: int = 0
    # Episode split so a score never sees a training frame: with holdout_every=k, episodes whose index
    # is k-1 mod k are held out; split=train uses the others, split=heldout only those, split=all every one.
    holdout_every: int = 0
    split: str = "all"  # all | train | heldout

    def __post_init__(self) -> None:
        if self.roots is not None and len(self.roots) != len(self.repo_ids):
            raise ValueError(
                f"Got {len(self.roots)} --dataset.roots for {len(self.repo_ids)} --dataset.repo_ids: give one root "
                "per repo id, in the same order (or none to use the LeRobot cache)."
            )
        if self.state_names and not self.include_state:
            raise ValueError(
                f"--dataset.state_names={self.state_names} chooses which state entries the prompt shows, but the state "
                "is not in the prompt: add --dataset.include_state=true (or drop --dataset.state_names)."
            )
        if self.split not in SPLITS:
            raise ValueError(f"--dataset.split={self.split!r}: choose one of {SPLITS}.")
        if self.split != "all" and self.holdout_every < 2:
            raise ValueError(
                f"--dataset.split={self.split} needs --dataset.holdout_every=K (K >= 2: every K-th episode held out)."
            )


@dataclass
class VQAConfig:
    """Extra VQA data: LLaVA records {"image": path(s), "conversations": [{"from", "value"}]} as a JSON list or JSONL."""

    path: Path | None = None
    image_root: Path | None = None  # image paths in the JSON are relative to this (default: the JSON's folder)
    ratio: float = 0.0  # VQA samples per action sample
    # The "VQA base" (docs/study.md): train on this file alone, every record once an epoch, with no action samples
    # (no --dataset.*). The backbone still gets the action vocabulary (untrained rows) of --model.fast_tokenizer.
    only: bool = False

    def __post_init__(self) -> None:
        if self.only and self.path is None:
            raise ValueError("--vqa.only=true trains on VQA records alone: give them with --vqa.path=FILE.json.")


@dataclass
class LoRASection:
    """``--lora.*``: LoRA / QLoRA on the language model instead of training every parameter."""

    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    # Linear layers of the language model that get adapters (names inside its decoder layers).
    target_modules: list[str] = field(default_factory=lambda: list(LANGUAGE_TARGETS))
    quantize: str = "none"  # none: frozen base in the compute dtype | 4bit: QLoRA (bitsandbytes NF4)

    def __post_init__(self) -> None:
        if self.quantize not in QUANTIZE:
            raise ValueError(f"--lora.quantize={self.quantize!r}: choose from {list(QUANTIZE)}.")
        if self.quantize != "none" and not self.enabled:
            raise ValueError(f"--lora.quantize={self.quantize} quantizes the base under LoRA: add --lora.enabled=true.")
        if self.r < 1 or not self.target_modules:
            raise ValueError("--lora.r must be at least 1 and --lora.target_modules must name at least one layer.")
        if "lm_head" in self.target_modules:
            raise ValueError("--lora.target_modules: drop lm_head (TRL's loss reads lm_head.weight directly, an "
                             "adapter on it would never train); the action tokens' LM head rows are trained anyway.")


@dataclass
class AlignSFTConfig:
    dataset: AlignDataConfig = field(default_factory=AlignDataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    vqa: VQAConfig = field(default_factory=VQAConfig)
    lora: LoRASection = field(default_factory=LoRASection)  # one GPU: LoRA / QLoRA (align/lora.py)
    reasoning: Path | None = None  # JSONL from `roboalign align reason`; None = scripted motion descriptions
    fast_vocab_size: int = 2048  # when a FAST tokenizer is fitted here (the paper's FAST+ vocabulary size)
    max_length: int | None = 2048
    push_to_hub: str | None = None  # <user>/<name>: also push the final model there (see hub.py)


@dataclass
class GRPOSection:
    """GRPO-specific settings, passed through to TRL's GRPOConfig."""

    num_generations: int = 5
    beta: float = 0.01  # KL coefficient
    temperature: float = 1.0
    top_p: float = 0.99
    # Must hold the longest target completion (reasoning + markup + FAST span), or GRPO rewards brevity;
    # 0 = size it from the data (longest target + 16; --reasoning gives the SFT reasoning, else scripted motion).
    max_completion_length: int = 512
    reward: str = "prefix"  # prefix (paper: longest matching FAST prefix) | l1 (decoded-action error)
    l1_scale: float = 0.2
    loss_type: str = "dapo"  # token-level averaging, like EasyR1's default
    # Completions generated per rollout over all ranks (paper: 512 prompts x 5 = 2560); None: one update batch.
    # Each rollout then feeds generation_batch_size / (per-device batch x ranks) micro-steps (TRL's
    # steps_per_generation; give one or the other).
    generation_batch_size: int | None = None
    steps_per_generation: int | None = None
    use_vllm: bool = False  # generate with vLLM (pip install 'lerobot_policy_roboalign[vllm]', CUDA only)
    vllm_mode: str = "colocate"  # colocate (in the training processes) | server (`trl vllm-serve`)
    vllm_gpu_memory_utilization: float = 0.3  # colocate: vLLM's share of each GPU (weights + KV cache)
    vllm_enable_sleep_mode: bool = True  # colocate: vLLM frees its GPU memory while the policy trains


# GRPO's defaults live in subclasses, not in default_factory: draccus rebuilds a section from its class's defaults
# as soon as one of its fields is given on the command line.
@dataclass
class GRPOModelConfig(ModelConfig):
    """The model section of GRPO: all parameters trained, the vision tower included (the paper)."""

    freeze_vision: bool = False


@dataclass
class GRPOTrainingConfig(TrainingConfig):
    """The trainer section of GRPO: the paper's constant lr 1e-6, no warmup, 5 completions per device."""

    output_dir: Path = Path("outputs/align_grpo")
    learning_rate: float = 1e-6
    lr_scheduler_type: str = "constant"
    warmup_ratio: float = 0.0
    per_device_train_batch_size: int = 5


@dataclass
class AlignGRPOConfig:
    dataset: AlignDataConfig = field(default_factory=AlignDataConfig)
    model: GRPOModelConfig = field(default_factory=GRPOModelConfig)
    training: GRPOTrainingConfig = field(default_factory=GRPOTrainingConfig)
    grpo: GRPOSection = field(default_factory=GRPOSection)
    lora: LoRASection = field(default_factory=LoRASection)  # one GPU: LoRA / QLoRA on the SFT model (align/lora.py)
    push_to_hub: str | None = None  # <user>/<name>: also push the final model there (see hub.py)
    reasoning: Path | None = None  # `align reason` output used at SFT: sizes/checks the completion cap


@dataclass
class ReasonConfig:
    dataset: AlignDataConfig = field(default_factory=AlignDataConfig)
    source: str = "mllm"  # mllm (the paper) | scripted (motion description, for tiny offline backbones)
    model_path: str = "Qwen/Qwen2.5-VL-7B-Instruct"
    output: Path = Path("outputs/reasoning.jsonl")
    batch_size: int = 8
    max_new_tokens: int = 256
    engine: str = "hf"  # hf (transformers generate) | vllm (pip install 'lerobot_policy_roboalign[vllm]', CUDA)
    vllm_gpu_memory_utilization: float = 0.9  # vLLM's share of each GPU (weights + KV cache)

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"--source={self.source!r} is not one of {SOURCES}.")
        if self.engine not in ENGINES:
            raise ValueError(f"--engine={self.engine!r} is not one of {ENGINES}.")


@dataclass
class PlanConfig:
    model: str = "Qwen/Qwen2.5-VL-7B-Instruct"  # hub id or local dir: only its config.json is read
    # accelerate config files; default: examples/accelerate/*.yaml
    accelerate_configs: list[str] = field(default_factory=list)
    num_processes: int | None = None  # override the configs' num_processes (GPUs)
    gpu_memory_gb: float = 80.0
    headroom: float = 0.1  # a launch fits when its peak is under (1 - headroom) x gpu_memory_gb
    stages: list[str] = field(default_factory=lambda: list(STAGES))
    action_tokens: int = 2050  # <ACTION_START>, <ACTION_END> and the FAST vocabulary added at SFT
    gradient_checkpointing: bool = True
    # full: every parameter trained (vision frozen at SFT); lora: adapters on a frozen bf16 base; qlora: on a 4-bit base
    method: str = "full"
    lora_r: int = 16
    lora_target_modules: list[str] = field(default_factory=lambda: list(LANGUAGE_TARGETS))
    # SFT (examples/paper/align_sft.json): samples per GPU and step, tokens per sample
    sft_micro_batch: int = 4
    sft_seq_len: int = 2048
    freeze_vision: bool = True
    # GRPO (examples/paper/align_grpo.json): completions per GPU and step, their prompt and completion tokens
    grpo_micro_batch: int = 10
    grpo_prompt_len: int = 512
    grpo_completion_len: int = 512
    vllm: bool = True
    vllm_gpu_memory_utilization: float = 0.3
    vllm_sleep: bool = True
    # Completions per rollout over all GPUs (examples/paper/align_grpo.json: 512 prompts x 5 = 2560): vLLM's KV cache
    grpo_generation_batch: int = 2560
    attn_implementation: str = "sdpa"  # sdpa | flash_attention_2 | eager (the attention matrix is counted)
    # VLA (lerobot-train, examples/paper/*.json): frames per GPU, prompt tokens, the layer the head reads
    vla_batch: int = 4  # lerobot-train's --batch_size is per process: the paper's 32 over 8 GPUs
    vla_prompt_len: int = 256
    vla_layer: int = 18
    vla_head_hidden: int = 512
    vla_head_layers: int = 8
    output_dir: Path | None = None  # also write plan.md and plan.json there

    def __post_init__(self) -> None:
        unknown = sorted(set(self.stages) - set(STAGES))
        if unknown:
            raise ValueError(f"--stages: unknown {unknown}; choose from {list(STAGES)}.")
        if self.attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise ValueError(f"--attn_implementation={self.attn_implementation!r}: choose from {ATTN_IMPLEMENTATIONS}.")
        if self.method not in METHODS:
            raise ValueError(f"--method={self.method!r}: choose from {list(METHODS)}.")


@dataclass
class GenerateConfig:
    model_path: str = "outputs/align_grpo/model"
    dataset: AlignDataConfig = field(default_factory=AlignDataConfig)
    index: int = 0  # frame of the first dataset, when --dataset.repo_ids is given
    images: list[str] = field(default_factory=list)  # image files, with --instruction, instead of a dataset
    instruction: str | None = None
    max_new_tokens: int = 512
    do_sample: bool = False
