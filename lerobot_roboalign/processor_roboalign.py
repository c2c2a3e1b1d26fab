"""Pre/post-processing for RoboAlign: input checks, LeRobot's normalisation, device moves.

The instruction and the camera images stay raw here: the backbone's own processor and chat
template turn them into tokens inside the model, with the user-turn template and image size
the MLLM was aligned with unless configured otherwise (see ``alignment_format.py``).
"""

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from lerobot.configs import PipelineFeatureType, PolicyFeature
from lerobot.lerobot_types import TransitionKey
from lerobot.processor import (
    PolicyAction,
    PolicyProcessorPipeline,
    ProcessorStep,
    ProcessorStepRegistry,
    make_default_policy_processor_steps,
    make_policy_processor_pipelines,
)
from lerobot.utils.constants import ACTION, OBS_STATE

from .configuration_roboalign import SAFETY_FLAGS, RoboAlignConfig
from .observations import RoboAlignObservationCheckStep
from .safety import (
    DEFAULT_MAX_MEASUREMENT_AGE_S,
    RoboAlignActionSafetyStep,
    RoboAlignMeasuredStateStep,
    validate_limits,
    validate_max_measurement_age,
)

DEFAULT_SAFETY_MAX_DELTA = 5.0  # joint units per control step, when the config sets none at training


@dataclass(frozen=True)
class InputSpec:
    """What a batch must contain: the policy's cameras and the state/action dimensions."""

    cameras: tuple[str, ...]
    state_dim: int | None
    action_dim: int | None

    @classmethod
    def from_config(cls, config: RoboAlignConfig) -> "InputSpec":
        state, action = config.robot_state_feature, config.action_feature
        return cls(
            cameras=tuple(config.image_features),
            state_dim=state.shape[-1] if state else None,
            action_dim=action.shape[-1] if action else None,
        )


def _check_dim(batch: dict[str, Any], key: str, expected: int | None, fix: str) -> None:
    if expected is None:
        return
    if key not in batch:
        raise KeyError(f"'{key}' is missing from the batch (present: {sorted(batch)}). Fix: {fix}")
    actual = batch[key].shape[-1]
    if actual != expected:
        raise ValueError(f"'{key}' has dimension {actual} but the policy expects {expected}. Fix: {fix}")


def _check_batch_sizes(spec: InputSpec, batch: dict[str, Any]) -> None:
    """Every camera and the state carry the same number of samples (B), or the model fails deep inside."""
    ranks = {**dict.fromkeys(spec.cameras, 4), **({OBS_STATE: 2} if spec.state_dim is not None else {})}
    sizes = {k: int(batch[k].shape[0]) for k, rank in ranks.items() if getattr(batch.get(k), "ndim", 0) == rank}
    if len(set(sizes.values())) > 1:
        raise ValueError(
            f"Batch size mismatch: {sizes} (first dimension). Every camera and observation.state must hold one "
            "row per sample. Fix: batch them together (one state row per frame; add the batch dimension to "
            "both, or to neither, e.g. state of shape (B, D) with images of shape (B, C, H, W))."
        )


def validate_batch(spec: InputSpec, batch: dict[str, Any], require_action: bool) -> None:
    """Fail early, naming the key and the fix, instead of deep inside the backbone or normaliser."""
    for camera in spec.cameras:
        if camera not in batch:
            cameras = [k for k in batch if k.startswith("observation.images.")]
            raise KeyError(
                f"Camera '{camera}' is configured in policy.input_features but missing from the batch "
                f"(cameras present: {cameras}). Fix: record/connect that camera, rename yours to it with "
                "--rename_map, or train a policy without it."
            )
    _check_dim(
        batch,
        OBS_STATE,
        spec.state_dim,
        "use a robot/dataset with the same joints as the training data (policy.input_features).",
    )
    if require_action:
        _check_dim(
            batch,
            ACTION,
            spec.action_dim,
            "train on a dataset whose action matches policy.output_features, or start a new policy.",
        )
    _check_batch_sizes(spec, batch)
    tasks = batch.get("task")
    tasks = [tasks] if isinstance(tasks, str) else tasks
    if not tasks or any(not isinstance(t, str) or not t.strip() for t in tasks):
        raise ValueError(
            "Empty task instruction: RoboAlign is language-conditioned. Fix: record with "
            "--dataset.single_task='...', or use an env/robot setup that provides a task string."
        )


@ProcessorStepRegistry.register(name="roboalign_validate_batch")
@dataclass
class RoboAlignValidateBatchStep(ProcessorStep):
    """Preprocessor step that runs :func:`validate_batch` before normalisation touches the data."""

    cameras: list[str] = field(default_factory=list)
    state_dim: int | None = None
    action_dim: int | None = None

    @classmethod
    def from_policy_config(cls, config: RoboAlignConfig) -> "RoboAlignValidateBatchStep":
        spec = InputSpec.from_config(config)
        return cls(cameras=list(spec.cameras), state_dim=spec.state_dim, action_dim=spec.action_dim)

    def __call__(self, transition: dict) -> dict:
        observation = transition.get(TransitionKey.OBSERVATION) or {}
        complementary = transition.get(TransitionKey.COMPLEMENTARY_DATA) or {}
        flat = {**observation, "task": complementary.get("task")}
        action = transition.get(TransitionKey.ACTION)
        if action is not None:
            flat[ACTION] = action
        spec = InputSpec(tuple(self.cameras), self.state_dim, self.action_dim)
        validate_batch(spec, flat, require_action=action is not None)
        return transition

    def get_config(self) -> dict[str, Any]:
        return {"cameras": self.cameras, "state_dim": self.state_dim, "action_dim": self.action_dim}

    def transform_features(
        self, features: dict[PipelineFeatureType, dict[str, PolicyFeature]]
    ) -> dict[PipelineFeatureType, dict[str, PolicyFeature]]:
        return features


def safety_overrides(config: RoboAlignConfig) -> dict[str, Any]:
    """The ``--policy.safety_*`` settings given for this run (None: keep the checkpoint's), validated now.

    Each one overrides its own field (a joint_max alone keeps the checkpoint's joint_min); the safety step
    checks the limits in force together. A value equal to the one an older lerobot-train saved in config.json
    (:func:`training_safety_values`) is that training value, not a flag: the safety step's (maybe bound) wins."""
    overrides = {
        "enabled": config.safety_enabled,
        "max_delta": config.safety_max_delta,
        "joint_min": config.safety_joint_min,
        "joint_max": config.safety_joint_max,
        "max_measurement_age_s": config.safety_max_measurement_age_s,
    }
    for key, value in training_safety_values(config).items():
        if overrides[key] == value:
            overrides[key] = None
    low, high = overrides["joint_min"], overrides["joint_max"]
    dim = config.action_feature.shape[0] if config.output_features.get(ACTION) is not None else None
    validate_limits(overrides["max_delta"], low if high is not None else None, high if low is not None else None,
                    dim=dim)  # fmt: skip
    for alone in (low, high) if (low is None) != (high is None) else ():
        validate_limits(None, alone, alone, dim=dim)
    validate_max_measurement_age(overrides["max_measurement_age_s"])
    return overrides


def training_safety_values(config: RoboAlignConfig) -> dict[str, Any]:
    """``safety_*`` in the checkpoint's config.json: training values saved by versions before they were saved
    unset, which would otherwise come back as rollout flags over the limits bound since (docs/safety.md)."""
    path = Path(config.pretrained_path or "") / "config.json" if config.pretrained_path else None
    if path is None or not path.is_file():
        return {}
    saved = json.loads(path.read_text())
    return {k.removeprefix("safety_"): saved[k] for k in SAFETY_FLAGS if saved.get(k) is not None}


def make_roboalign_pre_post_processors(
    config: RoboAlignConfig,
    dataset_stats: dict[str, dict[str, torch.Tensor]] | None = None,
) -> tuple[
    PolicyProcessorPipeline[dict[str, Any], dict[str, Any]],
    PolicyProcessorPipeline[PolicyAction, PolicyAction],
]:
    """Rename -> batch -> check/convert images and tasks -> validate -> measured state -> device -> normalise;
    and unnormalise -> safety -> CPU."""
    steps = make_default_policy_processor_steps(config, dataset_stats)
    input_steps = [
        steps.rename_observations,
        steps.add_batch_dim,
        RoboAlignObservationCheckStep(cameras=list(config.image_features)),
        RoboAlignValidateBatchStep.from_policy_config(config),
        RoboAlignMeasuredStateStep(link=config.safety_link),
        steps.to_device,
        steps.normalize,
    ]
    settings = safety_overrides(config)
    safety = RoboAlignActionSafetyStep(
        enabled=True if settings["enabled"] is None else settings["enabled"],
        max_delta=DEFAULT_SAFETY_MAX_DELTA if settings["max_delta"] is None else settings["max_delta"],
        joint_min=config.safety_joint_min,
        joint_max=config.safety_joint_max,
        limit_margin=config.safety_limit_margin,
        anchor_to_state=_state_matches_action(config),
        max_measurement_age_s=settings["max_measurement_age_s"] or DEFAULT_MAX_MEASUREMENT_AGE_S,
        link=config.safety_link,
        dataset_stats=dataset_stats,
    )
    output_steps = [steps.unnormalize, safety, steps.to_cpu]
    return make_policy_processor_pipelines(input_steps=input_steps, output_steps=output_steps)


def _state_matches_action(config: RoboAlignConfig) -> bool:
    """Actions are compared with the measured joints only where observation.state has the action's size (joint
    positions on a real arm); a sim's end-effector state beside delta actions is not compared."""
    state, action = config.robot_state_feature, config.output_features.get(ACTION)
    return state is not None and action is not None and tuple(state.shape) == tuple(action.shape)
