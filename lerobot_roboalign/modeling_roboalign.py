"""RoboAlignPolicy: a frozen (aligned) MLLM backbone feeding a flow-matching DiT action head.

Checkpoints: with a frozen backbone only the head is written to ``model.safetensors`` (a
7B backbone would otherwise be copied into every checkpoint); the backbone is reloaded
from ``vlm_model_name``, whose identity is recorded in ``backbone.json`` and checked on
load. With LoRA the adapter weights are saved too; with full fine-tuning everything is.
"""

import json
import logging
from pathlib import Path

import torch
from lerobot.policies.pretrained import PreTrainedPolicy
from lerobot.policies.rtc import RTCProcessor
from lerobot.utils.constants import ACTION, OBS_STATE
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from .action_head import ActionHeadSpec, FlowMatchingActionHead
from .alignment_format import resolve_vla_inputs
from .backbone import VLMBackbone
from .configuration_roboalign import RoboAlignConfig
from .dataset_mapping import check_dataset_features, cli_rename_map
from .feature_cache import DEFAULT_CACHE_DIR, FeatureCache, backbone_fingerprint, refuse_image_transforms, slot_length
from .feature_norm import ImageTokenStandardizer
from .hub import backbone_reference, peft_base_reference, shared_backbone_name
from .precision import cast_trainable, vla_precision
from .processor_roboalign import InputSpec, safety_overrides, training_safety_values, validate_batch
from .rtc import hold_chunk, make_inpainting, prefix_batch, prepare_rtc_rollout
from .chunk_blending import ChunkBlender
from .safety import SafetyContext

logger = logging.getLogger(__name__)
BACKBONE_INFO_FILE = "backbone.json"
WEIGHTS_FILE = "model.safetensors"


def absolute_if_local(name_or_path):
    """An existing local path made absolute (same type); a Hub id unchanged."""
    path = Path(name_or_path).expanduser()
    if not path.exists():
        return name_or_path
    return str(path.resolve()) if isinstance(name_or_path, str) else path.resolve()


class RoboAlignPolicy(PreTrainedPolicy):
    config_class = RoboAlignConfig
    name = "roboalign"

    def __init__(self, config: RoboAlignConfig, **kwargs):
        super().__init__(config)
        config.validate_features()
        # Saved into every checkpoint's config.json: a relative backbone directory would only load from this cwd.
        config.vlm_model_name = absolute_if_local(config.vlm_model_name)
        if kwargs.get("dataset_meta") is not None:  # lerobot-train: refuse now what would fail later
            check_dataset_features(config, kwargs["dataset_meta"].features, cli_rename_map())
            if config.push_to_hub:
                backbone_reference(config.vlm_model_name)
            if config.cache_features:
                refuse_image_transforms()
        self._dataset_meta = kwargs.get("dataset_meta")  # the feature cache's frames, tasks and identity
        self._feature_cache: FeatureCache | None = None
        resolve_vla_inputs(config)  # the prompt and image size the backbone was aligned on, unless set
        self.backbone_precision = vla_precision(config.backbone_mode, config.backbone_dtype, config.device)
        self.backbone = VLMBackbone(
            config.vlm_model_name,
            layer=config.vlm_layer,
            dtype=self.backbone_precision.load,
            image_resolution=config.image_resolution,
            prompt_template=config.prompt_template,
        )
        state_feature = config.robot_state_feature
        self.head = FlowMatchingActionHead(
            ActionHeadSpec(
                feature_dim=self.backbone.hidden_size,
                state_dim=state_feature.shape[0] if state_feature else 0,
                action_dim=config.action_feature.shape[0],
                chunk_size=config.chunk_size,
                hidden_size=config.head_hidden_size,
                num_layers=config.head_num_layers,
                num_heads=config.head_num_heads,
                dropout=config.head_dropout,
                num_inference_steps=config.num_inference_steps,
                num_timestep_buckets=config.num_timestep_buckets,
                beta_alpha=config.noise_beta_alpha,
                beta_beta=config.noise_beta_beta,
                noise_s=config.noise_s,
            )
        )
        self.image_token_norm = (
            ImageTokenStandardizer(self.backbone.image_token_count(len(config.image_features)), self.backbone.hidden_size)
            if config.standardize_image_tokens
            else None
        )
        self._input_spec = InputSpec.from_config(config)
        self._configure_backbone_training()
        cast_trainable(self.backbone, self.backbone_precision.trainable)  # LoRA adapters start in the base's dtype
        # This instance's own context with its processors' safety steps (safety.py); --policy.safety_* given for
        # this run override the checkpoint's safety step (loaded after this).
        self.safety_context = SafetyContext(link=config.safety_link)
        self.safety_context.publish_overrides(safety_overrides(config), training_safety_values(config))
        self.rtc_dropped_chunks = 0
        self.init_rtc_processor()
        self.reset()

    # ---- backbone modes -------------------------------------------------------------
    def _configure_backbone_training(self) -> None:
        """frozen: no gradients; lora: only peft adapters in the language model; full: everything."""
        mode = self.config.backbone_mode
        if mode == "lora":
            from peft import LoraConfig, inject_adapter_in_model

            modules = "|".join(self.config.lora_target_modules)
            lora = LoraConfig(
                r=self.config.lora_rank,
                lora_alpha=self.config.lora_alpha,
                lora_dropout=self.config.lora_dropout,
                target_modules=rf".*(language_model|text_model).*\.({modules})$",
            )
            inject_adapter_in_model(lora, self.backbone.vlm)
        for name, param in self.backbone.named_parameters():
            param.requires_grad = mode == "full" or (mode == "lora" and "lora_" in name)

    def train(self, mode: bool = True) -> "RoboAlignPolicy":
        super().train(mode)
        if self.config.backbone_mode == "frozen":
            self.backbone.eval()  # no dropout drift in features the head was trained on
        return self

    def _backbone_trains(self) -> bool:
        """True in lora/full mode and when LeRobot's ``--peft`` put adapters into a frozen backbone."""
        return any(p.requires_grad for p in self.backbone.parameters())

    # ---- LeRobot's --peft (fine-tuning a trained policy) ----------------------------
    def _get_default_peft_targets(self) -> dict:
        """Adapters on the language model's attention projections; the action head (with its state/action
        projections, the policy's own layers) is trained in full, and the image-token statistics kept up to date."""
        projections = "|".join(self.config.lora_target_modules)
        return {
            "target_modules": rf"backbone\.vlm\.(language_model|text_model)\..*\.({projections})",
            "modules_to_save": ["head", "image_token_norm"],
        }

    def wrap_with_peft(self, peft_config=None, peft_cli_overrides: dict | None = None) -> PreTrainedPolicy:
        """LeRobot writes the base checkpoint's path into ``adapter_config.json`` as given on the command line: make
        a local one absolute first, so that the adapters reload from any working directory."""
        if self.config.pretrained_path is not None:
            self.config.pretrained_path = absolute_if_local(self.config.pretrained_path)
        return super().wrap_with_peft(peft_config, peft_cli_overrides)

    def _validate_peft_config(self, peft_config) -> None:
        super()._validate_peft_config(peft_config)
        if self.config.backbone_mode == "lora":
            raise ValueError(
                "This checkpoint was trained with --policy.backbone_mode=lora: its backbone already has LoRA "
                "adapters. Fix: fine-tune it without --peft (--policy.path alone keeps training its adapters and "
                "head), or use --peft on a checkpoint trained with backbone_mode=frozen or full."
            )
        if self.config.push_to_hub:
            peft_base_reference(self.config.pretrained_path)
        if self.config.cache_features:
            raise ValueError(
                "--peft trains adapters inside the backbone, so its features change every step and cannot be cached "
                "(this checkpoint or run sets --policy.cache_features=true). Fix: add --policy.cache_features=false."
            )

    def push_model_to_hub(self, cfg, *args, **kwargs):
        """Push with the backbone named by its Hub repository, or refuse if it exists only on this machine."""
        with shared_backbone_name(self.config):
            return super().push_model_to_hub(cfg, *args, **kwargs)

    def get_optim_params(self) -> list[torch.nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def reset(self) -> None:
        """New episode: empty the action queue; the safety rate limit restarts from the measured joints.

        ``lerobot-eval`` resets only the policy, not its postprocessor, hence the shared context.
        """
        self._blender = ChunkBlender(self.config.chunk_blend_steps)
        self.safety_context.new_episode()

    # ---- model --------------------------------------------------------------------
    def _inputs(self, batch: dict[str, Tensor]) -> tuple[list[Tensor], list[str]]:
        tasks = batch["task"]
        return [batch[key] for key in self.config.image_features], [tasks] if isinstance(tasks, str) else list(tasks)

    def _backbone_outputs(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """The backbone's features (its own dtype), padding mask and image-token mask."""
        images, tasks = self._inputs(batch)
        autocast = self.backbone_precision.autocast
        with (
            torch.set_grad_enabled(self.training and self._backbone_trains()),
            torch.autocast(images[0].device.type, dtype=autocast, enabled=autocast is not None),
        ):
            return self.backbone(images, tasks)

    def _features(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        features, mask, image_tokens = self._backbone_outputs(batch)
        return self.standardize_image_tokens(features.float(), image_tokens), mask

    def _training_features(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, dict]:
        """Features for ``forward``: with ``cache_features``, each dataset frame's backbone outputs computed once
        (feature_cache.py), and whether this batch was read from the cache, for lerobot-train's log."""
        if not self.config.cache_features:
            return *self._features(batch), {}
        if "index" not in batch:
            raise KeyError(
                "--policy.cache_features=true keys features by dataset frame, but the batch has no 'index' (LeRobot's "
                "training batches carry it). Fix: train through lerobot-train / LeRobotDataset batches, or "
                "--policy.cache_features=false."
            )
        images, tasks = self._inputs(batch)
        left_padded = self.backbone.processor.tokenizer.padding_side == "left"
        (features, mask, image_tokens), hit = self._open_feature_cache(images[0].device).fetch(
            batch["index"], images, tasks, left_padded, lambda: self._backbone_outputs(batch)
        )
        return self.standardize_image_tokens(features.float(), image_tokens), mask, {"feature_cache_hit": float(hit)}

    def _open_feature_cache(self, device: torch.device) -> FeatureCache:
        """The cache of this backbone and dataset, opened at the first training batch (on its device)."""
        if self._feature_cache is not None:
            return self._feature_cache
        meta = self._dataset_meta
        if meta is None or meta.tasks is None:
            raise ValueError(
                "--policy.cache_features=true needs the dataset's metadata (its frame count and tasks), which "
                "lerobot-train gives the policy. Fix: build it with make_policy(config, ds_meta=dataset.meta) or "
                "RoboAlignPolicy(config, dataset_meta=dataset.meta)."
            )
        if self._backbone_trains():
            raise ValueError("--policy.cache_features=true, but the backbone has trainable weights (adapters?): its "
                             "features change every step. Fix: --policy.cache_features=false.")  # fmt: skip
        cameras = list(self.config.image_features)
        dataset = {"repo_id": meta.repo_id, "root": str(meta.root), "frames": meta.total_frames}
        self._feature_cache = FeatureCache.open(
            Path(self.config.feature_cache_dir or DEFAULT_CACHE_DIR),
            backbone_fingerprint(self.backbone, cameras, device, dataset),
            num_frames=meta.total_frames,
            slot_length=slot_length(self.backbone, list(meta.tasks.index), len(cameras)),
            dim=self.backbone.hidden_size,
            dtype=self.backbone.dtype,
        )
        return self._feature_cache

    def standardize_image_tokens(self, features: Tensor, image_tokens: Tensor) -> Tensor:
        """Features with each image token standardised per patch (feature_norm.py); others unchanged."""
        if self.image_token_norm is None:
            return features
        batch, _, dim = features.shape
        standardized = self.image_token_norm(features[image_tokens].view(batch, -1, dim))
        return features.masked_scatter(image_tokens[..., None], standardized)

    def _state(self, batch: dict[str, Tensor]) -> Tensor | None:
        return batch[OBS_STATE].float() if self.config.robot_state_feature else None

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict]:
        validate_batch(self._input_spec, batch, require_action=True)
        features, mask, cache_info = self._training_features(batch)
        loss = self.head.loss(features, mask, self._state(batch), batch[ACTION].float(), batch.get("action_is_pad"))
        return loss, {"flow_matching_loss": loss.item(), **cache_info}

    # ---- Real-Time Chunking (lerobot-rollout --inference.type=rtc) ------------------
    def supports_rtc(self) -> bool:
        return True

    def init_rtc_processor(self) -> None:
        """LeRobot's RTC engine calls this after setting ``config.rtc_config``."""
        config = self.config.rtc_config
        self.rtc_processor = RTCProcessor(config) if config is not None and config.enabled else None
        if self.rtc_processor is not None:
            prepare_rtc_rollout()

    def _inpainting(self, prev_chunk_left_over: Tensor | None, inference_delay: int | None, batch_size: int):
        rtc = self.config.rtc_config
        if prev_chunk_left_over is None or rtc is None or not rtc.enabled:
            return None
        prefix = prefix_batch(prev_chunk_left_over, batch_size, self.config.action_feature.shape[0])
        if prefix is None:
            return None
        return make_inpainting(self.config.rtc_mode, prefix, int(inference_delay or 0), rtc.execution_horizon,
                               self.rtc_processor, self.config.rtc_ramp_rate)  # fmt: skip

    @torch.no_grad()
    def predict_action_chunk(
        self,
        batch: dict[str, Tensor],
        inference_delay: int | None = None,
        prev_chunk_left_over: Tensor | None = None,
        **kwargs,
    ) -> Tensor:
        """A whole chunk (B, chunk_size, action_dim), in normalised action space.

        Under RTC (``inference_delay`` given) the chunk continues ``prev_chunk_left_over``, and since
        RTC bypasses ``select_action`` and its blender, a non-finite chunk is caught here: the arm
        finishes the previous chunk and then holds (rtc.hold_chunk); with no previous chunk it raises, so
        LeRobot's engine retries and nothing reaches the motors. The safety step guards each row when the
        engine sends it (safety.py).
        """
        self.safety_context.enter(batch, chunk=True)
        validate_batch(self._input_spec, batch, require_action=False)
        features, mask = self._features(batch)
        inpainting = self._inpainting(prev_chunk_left_over, inference_delay, features.shape[0])
        chunk = self.head.sample(features, mask, self._state(batch), inpainting)
        if inference_delay is None:
            return self.safety_context.tag(chunk)
        if torch.isfinite(chunk).all():
            return self.safety_context.tag(chunk)
        self.rtc_dropped_chunks += 1
        if prev_chunk_left_over is None:
            raise RuntimeError(
                "RoboAlign safety: the first action chunk is not finite (NaN/inf observation or weights); "
                "nothing is sent to the arm. Check the cameras/state and the checkpoint's normalisation stats."
            )
        logger.warning("RoboAlign safety: non-finite RTC chunk dropped; finishing the previous chunk, then holding.")
        prefix = chunk[:, :0] if inpainting is None else inpainting.prefix.to(chunk)  # nothing left but holds
        return self.safety_context.tag(hold_chunk(prefix, self.config.chunk_size))

    @torch.no_grad()
    def select_action(self, batch: dict[str, Tensor], **kwargs) -> Tensor:
        """One action per control step from a queue of chunks.

        The model runs every ``n_action_steps - chunk_blend_steps`` steps; the overlapping steps
        of consecutive chunks are cross-faded, and a non-finite chunk is dropped (the arm finishes
        the previous one, then holds) instead of reaching the motors.
        """
        self.safety_context.enter(batch)
        if self._blender.needs_chunk():
            self._blender.push(self.predict_action_chunk(batch)[:, : self.config.n_action_steps].as_subclass(Tensor))
        action = self._blender.pop()
        self.safety_context.hold = self._blender.holding
        return self.safety_context.tag(action)

    # ---- checkpoints ----------------------------------------------------------------
    def _backbone_info(self) -> dict:
        return {
            "vlm_model_name": self.config.vlm_model_name,
            "architecture": type(self.backbone.vlm).__name__,
            "hidden_size": self.backbone.hidden_size,
            "vlm_layer": self.config.vlm_layer,
            "backbone_mode": self.config.backbone_mode,
        }

    def _is_checkpointed(self, key: str) -> bool:
        """Frozen backbone weights live at ``vlm_model_name``, not in every checkpoint."""
        mode = self.config.backbone_mode
        return mode == "full" or not key.startswith("backbone.") or (mode == "lora" and "lora_" in key)

    def _save_pretrained(self, save_directory: Path, state_dict: dict[str, Tensor] | None = None) -> None:
        state_dict = self.state_dict() if state_dict is None else state_dict
        state_dict = {k: v.contiguous() for k, v in state_dict.items() if self._is_checkpointed(k)}
        super()._save_pretrained(save_directory, state_dict=state_dict)
        (Path(save_directory) / BACKBONE_INFO_FILE).write_text(json.dumps(self._backbone_info(), indent=2))

    @classmethod
    def from_pretrained(cls, pretrained_name_or_path: str | Path, **kwargs) -> "RoboAlignPolicy":
        directory = Path(pretrained_name_or_path)
        if directory.is_dir():
            for required in ("config.json", WEIGHTS_FILE):
                if not (directory / required).is_file():
                    raise FileNotFoundError(
                        f"Checkpoint directory {directory} is missing {required}: it is incomplete (an interrupted "
                        "save?) or not a policy checkpoint. Fix: point --policy.path at a complete directory such as "
                        "outputs/train/<run>/checkpoints/last/pretrained_model."
                    )
        return super().from_pretrained(pretrained_name_or_path, **kwargs)

    @classmethod
    def _load_as_safetensor(cls, model: "RoboAlignPolicy", model_file: str, map_location: str, strict: bool):
        _check_backbone_matches(model, Path(model_file).parent / BACKBONE_INFO_FILE)
        try:
            state_dict = load_file(model_file)
        except (SafetensorError, OSError) as error:
            raise OSError(
                f"Cannot read the policy weights {model_file} ({error}): the file is corrupt or truncated. "
                "Fix: re-copy the checkpoint, or use an earlier one from checkpoints/."
            ) from error
        try:
            missing, unexpected = model.load_state_dict(state_dict, strict=False)
        except RuntimeError as error:
            raise RuntimeError(
                f"The weights in {model_file} do not fit this policy ({error}). Was it trained with another "
                "backbone or action/state dimension? Fix: use the same --policy.vlm_model_name and dataset features."
            ) from error
        missing = [k for k in missing if model._is_checkpointed(k)]
        if missing and all(k.startswith("image_token_norm.") for k in missing):
            logger.warning(
                "%s predates image-token standardisation: its head was trained on raw features, which the "
                "standardiser's identity statistics pass through unchanged.", model_file,
            )  # fmt: skip
            missing = []
        if missing or unexpected:
            raise ValueError(
                f"{model_file} does not match a RoboAlign policy with backbone_mode="
                f"{model.config.backbone_mode!r}: missing {missing[:3]}, unexpected {unexpected[:3]}. Fix: load it "
                "with the config it was saved with (its config.json) or retrain."
            )
        return model


def _check_backbone_matches(model: RoboAlignPolicy, info_file: Path) -> None:
    """Refuse a head trained on another backbone: its features would be meaningless."""
    if not info_file.is_file():
        return
    saved = json.loads(info_file.read_text())
    current = model._backbone_info()
    for key in ("architecture", "hidden_size", "vlm_layer"):
        if saved.get(key) != current[key]:
            raise ValueError(
                f"This checkpoint's head was trained on backbone {saved.get('vlm_model_name')!r} "
                f"({key}={saved.get(key)}), but --policy.vlm_model_name={current['vlm_model_name']!r} gives "
                f"{key}={current[key]}. Fix: pass --policy.vlm_model_name pointing to the backbone it was trained with."
            )
