"""Configuration of the RoboAlign VLA: an (aligned) MLLM backbone + a GR00T-style flow-matching head."""

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from lerobot.configs import NormalizationMode, PreTrainedConfig, parser
from lerobot.optim import AdamWConfig, CosineDecayWithWarmupSchedulerConfig
from lerobot.policies.rtc import RTCConfig

logger = logging.getLogger(__name__)
BACKBONE_MODES = ("frozen", "lora", "full")
# Rollout flags that override the checkpoint's safety step; saved unset (see RoboAlignConfig._save_pretrained).
SAFETY_FLAGS = (
    "safety_enabled", "safety_max_delta", "safety_joint_min", "safety_joint_max", "safety_max_measurement_age_s"
)


@PreTrainedConfig.register_subclass("roboalign")
@dataclass
class RoboAlignConfig(PreTrainedConfig):
    """Every field can be set from LeRobot's CLI as ``--policy.<field>=value``.

    Defaults follow the paper (Qwen2.5-VL-7B, features of layer 18, chunk 16, 4 denoising
    steps) and GR00T N1.5's head; tests and the demo shrink them with a tiny local backbone.
    """

    # Not pushed unless asked (--policy.push_to_hub=true --policy.repo_id=USER/NAME): LeRobot's default (true) makes
    # every lerobot-train without a repo_id fail, and a policy on a local backbone must not be shared before it
    # (hub.py refuses that push with the command that shares the backbone first).
    push_to_hub: bool = False

    # Input / output structure.
    n_obs_steps: int = 1
    chunk_size: int = 16
    n_action_steps: int = 16

    normalization_mapping: dict[str, NormalizationMode] = field(
        default_factory=lambda: {
            "VISUAL": NormalizationMode.IDENTITY,
            "STATE": NormalizationMode.MEAN_STD,
            "ACTION": NormalizationMode.MEAN_STD,
        }
    )

    # Backbone: any image-text-to-text model, by hub id or local path.
    vlm_model_name: str = "Qwen/Qwen2.5-VL-7B-Instruct"
    vlm_layer: int = 18  # hidden states of this layer feed the head; layers above it are not run
    backbone_mode: str = "frozen"  # frozen | lora | full
    # Compute dtype of the backbone (auto: bfloat16 on CUDA, float32 elsewhere). Trained backbone weights (full mode,
    # LoRA adapters) and the head are float32 master weights; a frozen backbone is stored in this dtype (precision.py).
    backbone_dtype: str = "auto"
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    # What the backbone is shown; unset (None): what it was aligned on, read from its roboalign_format.json, or the
    # alignment defaults for a backbone never aligned (alignment_format.py): ALIGN_INSTRUCTION, each camera's own size.
    image_resolution: tuple[int, int] | None = None  # (H, W) every camera is resized to
    prompt_template: str | None = None  # the user turn ({task}, {state} left empty); the chat template wraps it

    # Cache the frozen backbone's features of each dataset frame on disk (feature_cache.py) and train the head on
    # them: after the first epoch a training step skips the backbone, with the same losses. Frozen backbone only,
    # refused with image augmentation (--dataset.image_transforms.enable=true: pixels change every epoch). Keyed by
    # frame and backbone fingerprint under feature_cache_dir (None: ~/.cache/lerobot_roboalign/features), so runs
    # on the same backbone and dataset (head seeds, a resumed run) share it.
    cache_features: bool = False
    feature_cache_dir: str | None = None

    # Standardise each image token per (patch, channel) with running statistics saved with the head
    # (feature_norm.py): what moves in the scene is a small change on top of what is always there.
    standardize_image_tokens: bool = True

    # Flow-matching DiT action head (GR00T N1.5 style).
    head_hidden_size: int = 512
    head_num_layers: int = 8
    head_num_heads: int = 8
    head_dropout: float = 0.0
    num_inference_steps: int = 4
    num_timestep_buckets: int = 1000
    noise_beta_alpha: float = 1.5
    noise_beta_beta: float = 1.0
    noise_s: float = 0.999

    # Safety on the way to the motors (real arms); see safety.py and docs/safety.md. Joint units: degrees on
    # SO-100/101 joints, 0..100 on their gripper; on Koch -100..100 over the calibrated range (gripper 0..100).
    # None: what the checkpoint's policy_postprocessor.json holds (at training: these values, else enabled,
    # max_delta 5.0, the dataset's action min/max + margin; then what `roboalign calibration check
    # --checkpoint` bound). Given at rollout / eval, these override the checkpoint. Saved unset in config.json.
    safety_enabled: bool | None = None
    safety_max_delta: float | None = None  # largest change of a target per control step
    safety_joint_min: list[float] | None = None
    safety_joint_max: list[float] | None = None
    safety_limit_margin: float = 0.05
    # Longest time (s) from an observation's capture (the robot read) to its action chunk; over it the arm holds
    # until a fresh chunk arrives (None: the safety step's, default safety.DEFAULT_MAX_MEASUREMENT_AGE_S = 5 s).
    safety_max_measurement_age_s: float | None = None
    # Names this policy in its processors' safety steps: a postprocessor of another checkpoint is refused.
    safety_link: str = field(default_factory=lambda: uuid.uuid4().hex)
    chunk_blend_steps: int = 4  # cross-fade this many steps of consecutive chunks (0: no blending)

    # Real-Time Chunking (lerobot-rollout --inference.type=rtc; see rtc.py). LeRobot's engine sets
    # rtc_config (execution horizon, guidance weight) from --inference.rtc.*; rtc_mode picks how a chunk
    # continues the previous one: guided (the RTC paper, LeRobot's RTCProcessor) or hard (frozen
    # delayed steps + exponential ramp, as GR00T N1.7 in LeRobot).
    rtc_config: RTCConfig | None = None
    rtc_mode: str = "guided"  # guided | hard
    rtc_ramp_rate: float = 6.0  # hard mode: how fast the overlap after the delay is released

    # Training presets (GR00T N1.5 fine-tuning defaults).
    optimizer_lr: float = 1e-4
    optimizer_betas: tuple[float, float] = (0.95, 0.999)
    optimizer_eps: float = 1e-8
    optimizer_weight_decay: float = 1e-5
    optimizer_grad_clip_norm: float = 1.0
    scheduler_warmup_steps: int = 500
    scheduler_decay_steps: int = 30_000
    scheduler_decay_lr: float = 1e-6

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            self._check_fields()
        except ValueError as error:
            # draccus (LeRobot's CLI) replaces an error raised here by "Couldn't instantiate class": log it first.
            logger.error("--policy: %s", error)
            raise

    def _check_fields(self) -> None:
        if self.n_action_steps > self.chunk_size:
            raise ValueError(
                f"n_action_steps ({self.n_action_steps}) cannot exceed chunk_size ({self.chunk_size}): "
                "set --policy.n_action_steps to at most --policy.chunk_size."
            )
        if not 0 <= self.chunk_blend_steps < self.n_action_steps:
            raise ValueError(
                f"chunk_blend_steps ({self.chunk_blend_steps}) must be >= 0 and below n_action_steps "
                f"({self.n_action_steps}): set --policy.chunk_blend_steps lower (0 disables blending)."
            )
        if self.rtc_mode not in ("guided", "hard"):
            raise ValueError(f"rtc_mode={self.rtc_mode!r} is not guided or hard: set --policy.rtc_mode=guided|hard.")
        if self.backbone_mode not in BACKBONE_MODES:
            raise ValueError(
                f"backbone_mode={self.backbone_mode!r} is not one of {BACKBONE_MODES}: "
                "set --policy.backbone_mode=frozen (default), lora or full."
            )
        if self.cache_features and self.backbone_mode != "frozen":
            raise ValueError(
                f"cache_features=true needs a frozen backbone, but backbone_mode={self.backbone_mode!r} trains it: "
                "its features change every step, so cached ones would be stale. Fix: --policy.backbone_mode=frozen, "
                "or --policy.cache_features=false."
            )
        if self.vlm_layer < 1:
            raise ValueError(f"vlm_layer must be >= 1 (got {self.vlm_layer}).")
        if self.head_hidden_size % self.head_num_heads:
            raise ValueError(
                f"head_hidden_size ({self.head_hidden_size}) must be divisible by head_num_heads "
                f"({self.head_num_heads})."
            )

    def _save_pretrained(self, save_directory: Path) -> None:
        """Save with ``safety_*`` unset: at training they went into the saved safety step
        (policy_postprocessor.json), where ``roboalign calibration check --checkpoint`` may tighten them; kept
        in config.json they would come back as rollout flags and override the bound limits (docs/safety.md)."""
        given = {name: getattr(self, name) for name in SAFETY_FLAGS}
        try:
            for name in given:
                setattr(self, name, None)
            super()._save_pretrained(save_directory)
        finally:
            for name, value in given.items():
                setattr(self, name, value)

    def validate_features(self) -> None:
        if not self.image_features:
            raise ValueError(
                "RoboAlign needs at least one camera (an 'observation.images.*' feature); "
                "the dataset or env provides none."
            )
        if self.action_feature is None:
            raise ValueError("RoboAlign needs an 'action' output feature.")

    def get_optimizer_preset(self) -> AdamWConfig:
        return AdamWConfig(
            lr=self.optimizer_lr,
            betas=self.optimizer_betas,
            eps=self.optimizer_eps,
            weight_decay=self.optimizer_weight_decay,
            grad_clip_norm=self.optimizer_grad_clip_norm,
        )

    def get_scheduler_preset(self) -> CosineDecayWithWarmupSchedulerConfig:
        return CosineDecayWithWarmupSchedulerConfig(
            peak_lr=self.optimizer_lr,
            decay_lr=self.scheduler_decay_lr,
            num_warmup_steps=self.scheduler_warmup_steps,
            num_decay_steps=self.scheduler_decay_steps,
        )

    @property
    def observation_delta_indices(self) -> None:
        return None

    @property
    def action_delta_indices(self) -> list[int]:
        return list(range(self.chunk_size))

    @property
    def reward_delta_indices(self) -> None:
        return None


def check_cli_prompt_template(argv: Sequence[str]) -> None:
    """Refuse an unquoted ``--policy.prompt_template`` with the fix, before LeRobot's parser sees it.

    draccus reads every command-line value as YAML before any config class does, so ``"Task: {task}."`` (after the
    shell's quotes are gone) stops there with a bare ``yaml.ParserError`` and ``{task}`` becomes a mapping. Called
    when LeRobot imports the plugin (``lerobot_policy_roboalign``), which its CLIs do before parsing.
    """
    raw = parser.parse_arg("policy.prompt_template", argv)
    if raw is None:
        return
    try:
        text = isinstance(yaml.safe_load(raw), str | None)  # null keeps the default
    except yaml.YAMLError:
        text = False
    if not text:
        quoted = raw.replace("'", "''")
        raise SystemExit(
            f"--policy.prompt_template={raw} is not a text once LeRobot's command line reads it as YAML ({{task}} "
            f"becomes a mapping, 'Word: ' a key). Fix: quote it inside the shell quotes, "
            f"e.g. --policy.prompt_template=\"'{quoted}'\"."
        )
