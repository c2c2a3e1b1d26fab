"""Safety between a RoboAlign policy and a real arm's motors.

Three pieces:

* :class:`ChunkBlender` runs inside the policy's ``select_action`` (normalised space). It
  owns the action queue: a chunk with non-finite values is dropped (the arm finishes the
  previous chunk, then holds its last action), and a new chunk is cross-faded into the
  remainder of the previous one so the arm does not jerk at chunk boundaries.
* :class:`RoboAlignMeasuredStateStep` (preprocessor, before normalisation) hands the joint
  positions measured in each observation to the safety step through a :class:`SafetyContext`.
* :class:`RoboAlignActionSafetyStep` is the last word before the robot (postprocessor,
  joint units after unnormalisation): non-finite targets are replaced by the last safe
  target, targets are clamped to the joint limits (calibrated ranges, or the dataset's
  action range) and rate-limited per control step. After a reset (every episode) the rate
  limit starts from the measured joint position, so a stale target cannot make the arm jump.
  A whole (B, T, A) chunk from LeRobot's RTC engine, which executes it from an index the step
  does not know (about the inference delay), is time-aligned with the previous chunk by the
  policy and kept within ``max_delta`` of the previous chunk's targets one and two steps earlier
  on the rows where the switch can happen, so the switch is within the rate limit; it is not pulled
  back to the measured joints, which lag behind the targets while the arm moves. The engine's
  first chunk holds the measured joints (the next one moves off at the rate limit).

The pre- and post-processor are saved and loaded separately by LeRobot, so they meet in a
:class:`SafetyContext` keyed by ``link`` (a random id written into both at training and into
the policy config). The policy publishes its ``--policy.safety_*`` settings there (they override
the saved step, so limits can be tightened at deployment) and ``policy.reset()`` marks a new
episode there (``lerobot-eval`` resets only the policy).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch
from lerobot.configs import PipelineFeatureType, PolicyFeature
from lerobot.lerobot_types import PolicyAction, TransitionKey
from lerobot.processor import PolicyActionProcessorStep, ProcessorStep, ProcessorStepRegistry
from lerobot.utils.constants import ACTION, OBS_STATE

logger = logging.getLogger(__name__)

SAFETY_STEP_NAME = "roboalign_action_safety"
MEASURED_STATE_STEP_NAME = "roboalign_measured_state"
OVERRIDABLE = ("enabled", "max_delta", "joint_min", "joint_max")


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
        self._hold: torch.Tensor | None = None  # the action repeated while chunks are dropped
        self.holding = False  # the last popped action is a hold, not a policy target
        self.dropped_chunks = 0

    def reset(self) -> None:
        self._queue.clear()
        self._last = None
        self._hold = None
        self.holding = False

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
                self._hold = self._last
                self._queue.append(self._hold)
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
        self.holding = self._last is self._hold
        return self._last


@dataclass
class SafetyContext:
    """What a policy, its preprocessor and its postprocessor share (they are built and loaded apart)."""

    measured_state: torch.Tensor | None = None  # raw observation.state of the latest observation
    overrides: dict[str, Any] = field(default_factory=dict)  # --policy.safety_* given for this run
    overrides_version: int = 0
    episode: int = 0
    hold_from: int | None = None  # the next action (or chunk rows from this index) holds the last safe target
    # RTC: (row of the policy's previous chunk at which the next chunk starts, the inference delay in control
    # steps the policy was given); offset 0: the engine's first chunk; None: unknown (other policies, or the
    # prefix was not the previous chunk's)
    chunk_link: tuple[int, int] | None = None

    def take_hold(self) -> int | None:
        """Consume the policy's hold request for the next action or chunk."""
        hold_from, self.hold_from = self.hold_from, None
        return hold_from

    def take_chunk_link(self) -> tuple[int, int] | None:
        """Consume the policy's note of where the next chunk continues the previous one."""
        link, self.chunk_link = self.chunk_link, None
        return link

    def publish_overrides(self, overrides: dict[str, Any]) -> None:
        self.overrides = {k: v for k, v in overrides.items() if v is not None}
        self.overrides_version += 1

    def new_episode(self) -> None:
        """The env / arm was reset: forget the last observation; safety steps restart at their next action."""
        self.measured_state = None
        self.chunk_link = None
        self.episode += 1


_CONTEXTS: dict[str, SafetyContext] = {}


def safety_context(link: str | None) -> SafetyContext:
    """The context shared by everything saved with ``link`` (checkpoints without one share ``""``)."""
    return _CONTEXTS.setdefault(link or "", SafetyContext())


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


def validate_limits(
    max_delta: float | list[float] | None, joint_min: list[float] | None, joint_max: list[float] | None
) -> None:
    """Refuse limits that let a bad target through or force motion (NaN, inf, max_delta <= 0, min > max)."""
    if max_delta is not None:
        deltas = torch.as_tensor(max_delta, dtype=torch.float64).flatten()
        if not (torch.isfinite(deltas).all() and (deltas > 0).all()):
            raise ValueError(
                f"RoboAlign safety: max_delta must be finite and > 0 for every joint (got {max_delta}); "
                "it is the largest change of a target per control step, in joint units. "
                "Set --policy.safety_max_delta to e.g. 5.0, or --policy.safety_enabled=false to disable "
                "the step."
            )
    if (joint_min is None) != (joint_max is None):
        raise ValueError("RoboAlign safety: give both joint_min and joint_max, or neither.")
    if joint_min is None:
        return
    low = torch.as_tensor(joint_min, dtype=torch.float64).flatten()
    high = torch.as_tensor(joint_max, dtype=torch.float64).flatten()
    if low.numel() != high.numel():
        raise ValueError(
            f"RoboAlign safety: joint_min has {low.numel()} values but joint_max has {high.numel()}; "
            "give one per joint."
        )
    if not (torch.isfinite(low).all() and torch.isfinite(high).all()):
        raise ValueError(
            f"RoboAlign safety: joint limits must be finite (joint_min={joint_min}, joint_max={joint_max}). "
            "NaN/inf limits come from broken dataset stats (recompute them) or a bad "
            "--policy.safety_joint_*; or bind the calibrated ranges with "
            "`roboalign calibration check FILE --robot.type=... --checkpoint=...`."
        )
    if (low > high).any():
        raise ValueError(
            f"RoboAlign safety: joint_min {joint_min} exceeds joint_max {joint_max}; swap them."
        )


def limits_from_stats(stats: dict[str, Any], margin: float) -> tuple[list[float], list[float]]:
    """Joint limits from a dataset's action min/max, widened by ``margin`` of each joint's range."""
    if not (math.isfinite(margin) and margin >= 0):
        raise ValueError(f"RoboAlign safety: limit_margin must be finite and >= 0 (got {margin}).")
    low = torch.as_tensor(stats["min"], dtype=torch.float32).flatten()
    high = torch.as_tensor(stats["max"], dtype=torch.float32).flatten()
    pad = (high - low) * margin
    return (low - pad).tolist(), (high + pad).tolist()


@ProcessorStepRegistry.register(name=MEASURED_STATE_STEP_NAME)
@dataclass
class RoboAlignMeasuredStateStep(ProcessorStep):
    """Preprocessor step: hands the raw ``observation.state`` (before normalisation) to the safety step.

    Without it the safety step cannot know where the arm is after a reset, so it could not
    rate-limit the first action of an episode nor a chunk computed from a new observation.
    """

    link: str | None = None

    def __call__(self, transition: dict) -> dict:
        state = (transition.get(TransitionKey.OBSERVATION) or {}).get(OBS_STATE)
        measured = None if state is None else torch.as_tensor(state).detach().to("cpu", torch.float32).clone()
        safety_context(self.link).measured_state = measured
        return transition

    def get_config(self) -> dict[str, Any]:
        return {"link": self.link}

    def transform_features(
        self, features: dict[PipelineFeatureType, dict[str, PolicyFeature]]
    ) -> dict[PipelineFeatureType, dict[str, PolicyFeature]]:
        return features


@dataclass
@ProcessorStepRegistry.register(name=SAFETY_STEP_NAME)
class RoboAlignActionSafetyStep(PolicyActionProcessorStep):
    """Make every action finite, within joint limits and within ``max_delta`` of the previous one.

    Works on (B, A) actions (one per control step: LeRobot's sync engine, ``lerobot-eval``,
    each action of the async server's chunk) and on (B, T, A) chunks (RTC engine; processed in
    time order). The "previous" target is the last emitted one, except after :meth:`reset` and
    ``policy.reset()``: then it is the joint position measured in the latest observation (when
    ``anchor_to_state`` and the state has the action's shape; otherwise the first target is only
    clamped). A (B, T, A) chunk that the policy says continues the previous chunk from row ``o``
    with an inference delay of ``d`` steps (``SafetyContext.chunk_link``) starts from the previous
    chunk's row ``o - 1``, and each row ``k <= d + 1`` also stays within ``max_delta`` of the
    previous chunk's rows ``o + k - 2`` and ``o + k - 1``: LeRobot's engine sends the new chunk from
    row ``k`` = the delay of this inference (``d`` or less unless it is slower than the recent ones)
    after the old chunk up to row ``o + k - 1``, or ``o + k - 2`` when the loop ran one step less than
    the delay it computes, so the switch is rate-limited too; later rows are free to turn at the rate
    limit. The engine's first chunk (offset 0) holds the measured joints: the engine sends it from a
    row the step cannot know, before its loop and the control loop are in step, so any moving row
    could be the first action sent. Without a note (other callers) a chunk starts from the measured
    joints.
    Limits are plain lists in the saved config
    so an arm's calibrated ranges can be bound to a checkpoint (``roboalign calibration check
    --checkpoint``); the policy's ``--policy.safety_*`` settings override them at load time.

    Attributes:
        enabled: turn the whole step off (not advised on a real arm).
        max_delta: largest change of a target per control step, one value or one per joint
            (joint units: degrees on SO-100/101; on Koch -100..100 over the calibrated range,
            so 1 unit is 0.5% of the range).
        joint_min / joint_max: per-joint limits; ``None`` derives them from ``dataset_stats``.
        limit_margin: widening of dataset-derived limits, as a fraction of each joint's range.
        anchor_to_state: actions are absolute targets in the units of ``observation.state``
            (true for SO-100/101/Koch joint-position control); false for delta actions.
        link: id shared with the preprocessor's measured-state step and the policy config.
        dataset_stats: LeRobot stats, only read at construction (not saved).
    """

    enabled: bool = True
    max_delta: float | list[float] | None = None
    joint_min: list[float] | None = None
    joint_max: list[float] | None = None
    limit_margin: float = 0.05
    anchor_to_state: bool = True
    link: str | None = None
    dataset_stats: dict[str, dict[str, Any]] | None = field(default=None, repr=False)
    _last_safe: torch.Tensor | None = field(default=None, init=False, repr=False)
    _saved: dict[str, Any] = field(default_factory=dict, init=False, repr=False)
    _seen_overrides: int = field(default=-1, init=False, repr=False)
    _seen_episode: int = field(default=0, init=False, repr=False)
    _warned_no_state: bool = field(default=False, init=False, repr=False)
    _pin_next: bool = field(default=False, init=False, repr=False)
    _last_chunk: torch.Tensor | None = field(default=None, init=False, repr=False)  # (B, T, A) as emitted

    def __post_init__(self) -> None:
        validate_limits(None, self.joint_min, self.joint_max)
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
        validate_limits(self.max_delta, self.joint_min, self.joint_max)
        self._saved = {k: getattr(self, k) for k in OVERRIDABLE}
        context = safety_context(self.link)
        self._seen_episode = context.episode
        self._sync_overrides(context)

    def get_config(self) -> dict[str, Any]:
        return {
            "enabled": self._saved["enabled"],
            "max_delta": self._saved["max_delta"],
            "joint_min": self._saved["joint_min"],
            "joint_max": self._saved["joint_max"],
            "limit_margin": self.limit_margin,
            "anchor_to_state": self.anchor_to_state,
            "link": self.link,
        }

    def _sync_overrides(self, context: SafetyContext) -> None:
        """Apply the policy's ``--policy.safety_*`` over the saved settings; log which limits are in force."""
        if context.overrides_version == self._seen_overrides:
            return
        settings = {**self._saved, **context.overrides}
        validate_limits(settings["max_delta"], settings["joint_min"], settings["joint_max"])
        for key, value in settings.items():
            setattr(self, key, value)
        self._seen_overrides = context.overrides_version
        given = sorted(context.overrides) or "none"
        logger.info(
            "RoboAlign safety in force: enabled=%s max_delta=%s joint_min=%s joint_max=%s (overridden by "
            "--policy.safety_*: %s; the rest from the checkpoint's policy_postprocessor.json)",
            self.enabled, self.max_delta, _fmt(self.joint_min), _fmt(self.joint_max), given,
        )  # fmt: skip

    def reset(self) -> None:
        """Forget the last target: the next one is rate-limited against the measured joint position."""
        self._last_safe = None
        self._pin_next = False
        self._last_chunk = None

    def start_chunk_at_observation(self) -> None:
        """The next actions are a chunk whose first one is for the observation's own time step.

        LeRobot's async server labels it so, and the client has executed that step already: pin it to the
        measured position, so the chunk moves at most ``max_delta`` per step from where the arm was, in step
        with the chunk before.
        """
        self.reset()
        self._pin_next = True

    def transform_features(
        self, features: dict[PipelineFeatureType, dict[str, PolicyFeature]]
    ) -> dict[PipelineFeatureType, dict[str, PolicyFeature]]:
        return features

    def action(self, action: PolicyAction) -> PolicyAction:
        context = safety_context(self.link)
        self._sync_overrides(context)
        if context.episode != self._seen_episode:
            self._seen_episode = context.episode
            self.reset()
        hold_from, link = context.take_hold(), context.take_chunk_link()
        if not self.enabled:
            return action
        if action.ndim == 3:
            safe = self._safe_chunk(action, context, hold_from, link)
        else:
            self._last_chunk = None
            safe = self._safe(action, context, hold_from is not None)
        if not torch.isfinite(safe).all():  # cannot happen with validated limits; never let it reach a motor
            raise RuntimeError("RoboAlign safety: a non-finite target survived the safety step; not sent.")
        return safe

    def _safe_chunk(
        self, chunk: torch.Tensor, context: SafetyContext, hold_from: int | None, link: tuple[int, int] | None
    ) -> torch.Tensor:
        """A (B, T, A) chunk in time order, continuing the previous chunk as ``link`` says if known."""
        previous, (offset, delay) = self._last_chunk, link or (-1, 0)
        if previous is None or previous.shape != chunk.shape or not 0 < offset < chunk.shape[1]:
            anchor = self._anchor(chunk[:, 0], context)  # no alignment: start from where the arm is
            if anchor is not None and offset == 0:  # the RTC engine's first chunk: hold there
                self._last_safe, self._last_chunk = anchor, anchor[:, None].expand_as(chunk).clone()
                return self._last_chunk.to(chunk.dtype)
            if anchor is not None:
                self.reset()
            previous = None
        else:
            self._last_safe = previous[:, offset - 1].clone()
        rows = []
        for k, row in enumerate(chunk.unbind(dim=1)):
            # the previous chunk's targets the arm may have been sent just before this row: the engine drops
            # ceil(latency / period) rows, one more than the loop executed when the latency is not a whole
            # number of periods (measured: almost every chunk), so both the step before and the one before it
            before = range(max(offset + k - 2, 0), min(offset + k, chunk.shape[1]))
            near = tuple(previous[:, i] for i in before) if previous is not None and k <= delay + 1 else ()
            rows.append(self._safe(row, context, hold_from is not None and k >= hold_from, near))
        self._last_chunk = torch.stack(rows, dim=1)
        return self._last_chunk.clone()

    def _anchor(self, like: torch.Tensor, context: SafetyContext) -> torch.Tensor | None:
        """The measured joint position, when it is usable as the previous target of ``like``."""
        state = context.measured_state
        usable = self.anchor_to_state and state is not None and state.shape[-1] == like.shape[-1]
        if usable and state.numel() != like.numel():
            usable = state.reshape(-1, like.shape[-1]).shape[0] in (1, like.shape[0])
        if not usable:
            if self.max_delta is not None and not self._warned_no_state:
                self._warned_no_state = True
                logger.warning(
                    "RoboAlign safety: no measured joint position matching the action (%s), so the first "
                    "action after a reset is clamped but not rate-limited.",
                    "no observation.state of that size" if self.anchor_to_state else "anchor_to_state=false",
                )
            return None
        anchor = state.reshape(-1, like.shape[-1]).to(like.device).expand_as(like).clone()
        return anchor if torch.isfinite(anchor).all() else None

    def _safe(
        self,
        action: torch.Tensor,
        context: SafetyContext,
        hold: bool = False,
        near: tuple[torch.Tensor, ...] = (),
    ) -> torch.Tensor:
        """One control step: hold if the policy dropped its chunk, else replace non-finite rows, clamp,
        rate-limit (against the previous target and, under RTC, also each of ``near``: targets the arm
        may have been sent just before this one), remember.

        The bounds always meet: they are intervals of half-width ``max_delta`` around the previous target
        and up to two consecutive targets of the previous chunk, each pair at most 2 ``max_delta`` apart
        (by induction over the rows), so in one dimension they share a point (Helly) and clamping into
        them one after the other ends in it.
        """
        dim = action.shape[-1]
        safe = action.detach().to(torch.float32).clone()
        if self._last_safe is not None and self._last_safe.shape != safe.shape:
            self._last_safe = None  # a new batch of envs (e.g. lerobot-eval's last, smaller batch)
        previous = self._last_safe if self._last_safe is not None else self._anchor(safe, context)
        if hold and previous is not None:  # not the dropped chunk's stale target, which may still be far away
            self._last_safe = previous.expand_as(safe).clone()
            return self._last_safe.to(action.dtype)
        bad = ~torch.isfinite(safe).all(dim=-1)
        if bad.any():
            if previous is None:
                raise RuntimeError(
                    "RoboAlign safety: the first action is not finite and the arm's position is unknown, so "
                    "there is no safe target to hold; refusing to command the arm. Check the checkpoint and "
                    "its normalisation stats."
                )
            logger.warning("RoboAlign safety: non-finite action replaced by the last safe target (holding).")
            safe[bad] = previous.expand_as(safe)[bad]
        low, high = _per_joint(self.joint_min, dim, "joint_min"), _per_joint(self.joint_max, dim, "joint_max")
        if low is not None:
            safe = torch.maximum(torch.minimum(safe, high.to(safe.device)), low.to(safe.device))
        max_delta = _per_joint(self.max_delta, dim, "max_delta")
        if self._pin_next and previous is not None:
            max_delta = torch.zeros(dim)  # the chunk's first action is for the moment of the measurement
        self._pin_next = False
        if max_delta is not None and previous is not None:
            step = max_delta.to(safe.device)
            safe = torch.maximum(torch.minimum(safe, previous + step), previous - step)
            for target in near:
                safe = torch.maximum(torch.minimum(safe, target.to(safe) + step), target.to(safe) - step)
        self._last_safe = safe.clone()
        return safe.to(action.dtype)


def _fmt(values: list[float] | None) -> str:
    return "None" if values is None else "[" + ", ".join(f"{v:.4g}" for v in values) + "]"
