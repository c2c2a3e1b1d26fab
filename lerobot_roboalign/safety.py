"""Safety between a RoboAlign policy and a real arm's motors.

Two pieces, one per space the actions live in:

* :class:`ChunkBlender` runs inside the policy's ``select_action`` (normalised space). It
  owns the action queue: a chunk with non-finite values is dropped (the arm finishes the
  previous chunk, then holds its last action), and a new chunk is cross-faded into the
  remainder of the previous one so the arm does not jerk at chunk boundaries.
* :class:`RoboAlignActionSafetyStep` is the last word before the robot (postprocessor,
  joint units after unnormalisation): non-finite targets are replaced by the last safe
  target, targets are clamped to the joint limits (calibrated ranges, or the dataset's
  action range) and rate-limited per control step, so a late or wild chunk cannot jump.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch
from lerobot.configs import PipelineFeatureType, PolicyFeature
from lerobot.lerobot_types import PolicyAction
from lerobot.processor import PolicyActionProcessorStep, ProcessorStepRegistry
from lerobot.utils.constants import ACTION

logger = logging.getLogger(__name__)

SAFETY_STEP_NAME = "roboalign_action_safety"


class ChunkBlender:
    """Action queue of a chunking policy that never emits a non-finite action nor a chunk-boundary jump.

    The policy asks :meth:`needs_chunk` every control step and, when true, pushes a freshly
    predicted chunk. A new chunk is requested while ``blend_steps`` actions of the previous
    one remain; those overlapping steps are cross-faded linearly from old to new.
    """

    def __init__(self, blend_steps: int = 0) -> None:
        if blend_steps < 0:
            raise ValueError(f"blend_steps must be >= 0 (got {blend_steps}); set it to 0 to disable blending.")
        self.blend_steps = blend_steps
        self._queue: deque[torch.Tensor] = deque()
        self._last: torch.Tensor | None = None
        self.dropped_chunks = 0

    def reset(self) -> None:
        self._queue.clear()
        self._last = None

    def needs_chunk(self) -> bool:
        return len(self._queue) <= self.blend_steps

    def push(self, chunk: torch.Tensor) -> None:
        """Queue a (B, T, A) chunk, blending its head into the previous chunk's remainder."""
        if not torch.isfinite(chunk).all():
            self.dropped_chunks += 1
            logger.warning(
                "RoboAlign safety: dropped an action chunk with non-finite values; "
                "finishing the previous chunk / holding the last action instead."
            )
            if not self._queue and self._last is not None:
                self._queue.append(self._last)
            return
        new = list(chunk.unbind(dim=1))
        old = list(self._queue)
        overlap = min(len(old), len(new))
        for i in range(overlap):
            weight = (i + 1) / (overlap + 1)
            new[i] = (1 - weight) * old[i] + weight * new[i]
        self._queue = deque(new)

    def pop(self) -> torch.Tensor:
        """Next (B, A) action; raises if no finite action was ever produced."""
        if not self._queue:
            raise RuntimeError(
                "RoboAlign safety: the policy has produced no finite action chunk yet, so there is no safe "
                "target to hold. Check the checkpoint (NaN weights?) and the observation normalisation stats."
            )
        self._last = self._queue.popleft()
        return self._last


def _per_joint(value: float | list[float] | None, dim: int, name: str) -> torch.Tensor | None:
    if value is None:
        return None
    tensor = torch.as_tensor(value, dtype=torch.float32).flatten()
    if tensor.numel() == 1:
        return tensor.expand(dim).clone()
    if tensor.numel() != dim:
        raise ValueError(
            f"RoboAlign safety: {name} has {tensor.numel()} values but the action has {dim} joints; "
            f"give one value or one per joint."
        )
    return tensor


def limits_from_stats(stats: dict[str, Any], margin: float) -> tuple[list[float], list[float]]:
    """Joint limits from a dataset's action min/max, widened by ``margin`` of each joint's range."""
    low = torch.as_tensor(stats["min"], dtype=torch.float32).flatten()
    high = torch.as_tensor(stats["max"], dtype=torch.float32).flatten()
    pad = (high - low) * margin
    return (low - pad).tolist(), (high + pad).tolist()


@dataclass
@ProcessorStepRegistry.register(name=SAFETY_STEP_NAME)
class RoboAlignActionSafetyStep(PolicyActionProcessorStep):
    """Make every action finite, within joint limits and within ``max_delta`` of the previous one.

    Works on (B, A) actions (LeRobot's sync engine, one per tick) and on (B, T, A) chunks
    (processed in time order). Limits are plain lists in the saved config so an arm's
    calibrated ranges can be bound to a checkpoint (``roboalign calibration check --checkpoint``).

    Attributes:
        enabled: turn the whole step off (not advised on a real arm).
        max_delta: largest change of a target per control step, one value or one per joint
            (joint units: degrees, or % of range for RANGE_M100_100 / RANGE_0_100 motors).
        joint_min / joint_max: per-joint limits; ``None`` derives them from ``dataset_stats``.
        limit_margin: widening of dataset-derived limits, as a fraction of each joint's range.
        dataset_stats: LeRobot stats, only read at construction (not saved).
    """

    enabled: bool = True
    max_delta: float | list[float] | None = None
    joint_min: list[float] | None = None
    joint_max: list[float] | None = None
    limit_margin: float = 0.05
    dataset_stats: dict[str, dict[str, Any]] | None = field(default=None, repr=False)
    _last_safe: torch.Tensor | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if (self.joint_min is None) != (self.joint_max is None):
            raise ValueError("RoboAlign safety: give both joint_min and joint_max, or neither.")
        action_stats = (self.dataset_stats or {}).get(ACTION, {})
        if self.joint_min is None and {"min", "max"} <= set(action_stats):
            self.joint_min, self.joint_max = limits_from_stats(action_stats, self.limit_margin)
        elif self.joint_min is None and self.enabled:
            logger.warning(
                "RoboAlign safety: no joint limits (no --policy.safety_joint_min/max and no action min/max in the "
                "dataset stats); only non-finite actions and the rate limit are guarded. On a real arm, bind the "
                "calibrated ranges with `roboalign calibration check FILE --robot.type=... --checkpoint=...`."
            )
        self.dataset_stats = None
        if self.joint_min is not None and any(lo > hi for lo, hi in zip(self.joint_min, self.joint_max)):
            raise ValueError(
                f"RoboAlign safety: joint_min {self.joint_min} exceeds joint_max {self.joint_max}; swap them."
            )

    def get_config(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "max_delta": self.max_delta,
            "joint_min": self.joint_min,
            "joint_max": self.joint_max,
            "limit_margin": self.limit_margin,
        }

    def reset(self) -> None:
        self._last_safe = None

    def transform_features(
        self, features: dict[PipelineFeatureType, dict[str, PolicyFeature]]
    ) -> dict[PipelineFeatureType, dict[str, PolicyFeature]]:
        return features

    def action(self, action: PolicyAction) -> PolicyAction:
        if not self.enabled:
            return action
        if action.ndim == 3:
            return torch.stack([self._safe(a) for a in action.unbind(dim=1)], dim=1)
        return self._safe(action)

    def _safe(self, action: torch.Tensor) -> torch.Tensor:
        """One control step: replace non-finite rows, clamp, rate-limit, remember."""
        dim = action.shape[-1]
        safe = action.detach().to(torch.float32).clone()
        if self._last_safe is not None and self._last_safe.shape != safe.shape:
            self._last_safe = None  # a new batch of envs (e.g. lerobot-eval's last, smaller batch)
        bad = ~torch.isfinite(safe).all(dim=-1)
        if bad.any():
            if self._last_safe is None:
                raise RuntimeError(
                    "RoboAlign safety: the first action is not finite, so there is no safe target to hold; "
                    "refusing to command the arm. Check the checkpoint and its normalisation stats."
                )
            logger.warning("RoboAlign safety: non-finite action replaced by the last safe target (holding).")
            safe[bad] = self._last_safe.expand_as(safe)[bad]
        low, high = _per_joint(self.joint_min, dim, "joint_min"), _per_joint(self.joint_max, dim, "joint_max")
        if low is not None:
            safe = torch.maximum(torch.minimum(safe, high.to(safe.device)), low.to(safe.device))
        max_delta = _per_joint(self.max_delta, dim, "max_delta")
        if max_delta is not None and self._last_safe is not None:
            step = max_delta.to(safe.device)
            safe = torch.maximum(torch.minimum(safe, self._last_safe + step), self._last_safe - step)
        self._last_safe = safe.clone()
        return safe.to(action.dtype)
