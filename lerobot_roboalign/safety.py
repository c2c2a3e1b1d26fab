"""Safety between a RoboAlign policy and a real arm's motors: one invariant at the last point before them.

The invariant (docs/safety.md): every command sent is finite, inside the joint limits, within ``max_delta``
of the previous command sent and within ``max_delta`` per control step of the joints last measured; with no
fresh measurement the command is refused and the arm holds. :class:`CommandGuard` enforces it, one command
at a time, where each entry point hands a command to the robot:

* ``lerobot-rollout`` (sync), ``lerobot-eval``, DAgger on the sync engine, the async server: the
  postprocessor's :class:`RoboAlignActionSafetyStep` on each (B, A) action;
* ``lerobot-rollout --inference.type=rtc`` (and DAgger on it): the step returns the chunk as
  :class:`GuardedRows`, whose rows pass the guard when LeRobot's ``ActionQueue.get()`` hands one to the
  control loop, so the guard sees the rows in the order the arm gets them, whatever the inference latency;
* the async client: :class:`lerobot_roboalign.async_inference.RoboAlignRobotClient`, after LeRobot's chunk
  aggregation, with the joints read from the bus right before each command.

:class:`ChunkBlender` (inside ``select_action``) drops non-finite chunks and cross-fades chunk boundaries.
:class:`RoboAlignMeasuredStateStep` (preprocessor) takes the measured joints. The policy, its preprocessor
and its postprocessor are loaded apart; they meet per thread: the preprocessor leaves its measurement in
a thread-local slot, the policy instance takes it into its own :class:`SafetyContext` (with its
``--policy.safety_*`` settings and its resets) and the postprocessor that runs next in that thread uses
that context. LeRobot runs pre -> policy -> post in one thread in every engine, so two policies in one
process never share a context, whatever their checkpoints' ``safety_link``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
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
DEFAULT_MAX_MEASUREMENT_AGE_S = 3.0


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


@dataclass(frozen=True)
class Measurement:
    """Joint positions from one observation (raw ``observation.state``) and when they were taken."""

    joints: torch.Tensor | None
    time: float


_LOCAL = threading.local()  # per thread: the preprocessor's last measurement, the policy context that ran last


@dataclass
class SafetyContext:
    """What one policy instance shares with the processor steps that run around it (one per policy)."""

    link: str | None = None
    measurement: Measurement | None = None
    overrides: dict[str, Any] = field(default_factory=dict)  # --policy.safety_* given for this run
    overrides_version: int = 0
    episode: int = 0
    reset_time: float = 0.0  # when the policy was last reset (measurements before it are stale)
    measures: bool = False  # joint measurements reach this policy (kept across resets)
    hold: bool = False  # the policy's blender is holding: the next command repeats the last one

    def enter(self) -> None:
        """The policy runs in this thread: take the preprocessor's measurement, serve the next postprocessor."""
        measurement = getattr(_LOCAL, "measurement", None)
        if measurement is not None:
            self.measurement, _LOCAL.measurement = measurement, None
            self.measures = self.measures or measurement.joints is not None
        _LOCAL.context = self

    def publish_overrides(self, overrides: dict[str, Any]) -> None:
        self.overrides = {k: v for k, v in overrides.items() if v is not None}
        self.overrides_version += 1

    def new_episode(self) -> None:
        """The env / arm was reset: forget the measurement; safety steps restart at their next command."""
        self.measurement = None
        self.hold = False
        self.episode += 1
        self.reset_time = time.perf_counter()


def note_measurement(joints: torch.Tensor | None) -> None:
    """Preprocessor side: a new observation starts a pre -> policy -> post round in this thread."""
    _LOCAL.measurement, _LOCAL.context = Measurement(joints, time.perf_counter()), None


def current_context(fallback: SafetyContext) -> SafetyContext:
    """The context of the policy that ran last in this thread, else ``fallback`` (a step used without a policy)."""
    context = getattr(_LOCAL, "context", None)
    if context is None:
        fallback.enter()
        _LOCAL.context = None
        return fallback
    return context


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


@dataclass
class Limits:
    """The settings in force for one command (after ``--policy.safety_*`` overrides)."""

    max_delta: torch.Tensor | None
    low: torch.Tensor | None
    high: torch.Tensor | None
    anchor_to_state: bool = True
    max_measurement_age_s: float = DEFAULT_MAX_MEASUREMENT_AGE_S
    # commands that may have been sent between the observation's capture and its measurement's timestamp
    # (LeRobot's RTC engine preprocesses an observation its control loop captured up to a tick earlier)
    capture_lag_steps: int = 0


class CommandGuard:
    """The invariant, one command at a time, in the order the arm receives them.

    Clamps, in order (each a method: the seams the mutation test removes one at a time): ``_is_fresh`` (a
    measurement taken before the last :meth:`reset`, e.g. by an inference in flight, or more than
    ``max_measurement_age_s`` ago, is none), ``_hold`` (without a fresh measurement: repeat the last command,
    or refuse), ``_replace_non_finite``, ``_clamp_to_limits``, ``_clamp_to_previous`` (max_delta from the
    previous command sent), ``_clamp_to_measured`` (max_delta per command sent since the measurement, from
    the measured joints; applied last, so where the arm was moved away from the last command, e.g. a human
    correction, the command follows the arm, not the stale command).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.ever_measured = False  # measurements exist for this arm (kept across resets)
        self._intervals: deque[float] = deque(maxlen=32)  # between commands: the control period (kept too)
        self._last_send_time: float | None = None
        self.reset()

    def reset(self, at: float | None = None) -> None:
        """Forget the commands sent and the measurement; measurements taken before ``at`` (now) are stale."""
        with getattr(self, "_lock", threading.Lock()):
            self.last_sent: torch.Tensor | None = None
            self.measurement: Measurement | None = None
            self.reset_time = time.perf_counter() if at is None else at
            self.anchored = False  # the last command was compared with a measurement
            self._sent_times: deque[float] = deque(maxlen=4096)
            self.holds = 0  # commands held (the policy's blender holds, or no fresh measurement)

    def observe(self, measurement: Measurement | None) -> None:
        """The newest measurement; one from before the last reset (an inference in flight) moves nothing."""
        if measurement is None or measurement.joints is None:
            return
        with self._lock:
            self.ever_measured = True
            if self.measurement is None or measurement.time >= self.measurement.time:
                self.measurement = measurement  # whether it is fresh enough is decided per command (_is_fresh)

    def _is_fresh(self, measurement: Measurement, limits: Limits) -> bool:
        """Taken after the last reset (by more than the capture lag: under RTC the observation measured may
        have been captured up to a control period before), and at most ``max_measurement_age_s`` ago."""
        lag_s = limits.capture_lag_steps * statistics.median(self._intervals) if self._intervals else 0.0
        return (
            measurement.time > self.reset_time + lag_s
            and time.perf_counter() - measurement.time <= limits.max_measurement_age_s
        )

    def command(self, target: torch.Tensor, limits: Limits, hold: bool = False) -> torch.Tensor | None:
        """The (B, A) command to send for ``target``, or None: refused (nothing known to hold at)."""
        with self._lock:
            safe = target.detach().to("cpu", torch.float32).clone()
            if self.last_sent is not None and self.last_sent.shape != safe.shape:
                self.last_sent = None  # a new batch of envs (e.g. lerobot-eval's last, smaller batch)
            applies, measured, reach = self._fresh_measurement(safe, limits)
            self.anchored = applies
            if hold or (applies and measured is None):
                return self._hold(safe, measured)
            fallback = self.last_sent if self.last_sent is not None else measured
            safe = self._replace_non_finite(safe, fallback)
            if safe is None:
                return None
            safe = self._clamp_to_limits(safe, limits)
            safe = self._clamp_to_previous(safe, limits)
            safe = self._clamp_to_measured(safe, measured, reach)
            return self._sent(safe, target)

    # ---- the clamps --------------------------------------------------------------------------------
    def _fresh_measurement(
        self, like: torch.Tensor, limits: Limits
    ) -> tuple[bool, torch.Tensor | None, torch.Tensor | None]:
        """(measurement applies to these commands, the fresh measured joints or None, how far from them).

        It applies to absolute joint targets whose measurement has the action's shape; then a measurement
        older than the last reset or than ``max_measurement_age_s`` is no measurement.
        """
        if not (limits.anchor_to_state and self.ever_measured):
            return False, None, None
        measurement = self.measurement
        if measurement is None:
            return True, None, None
        joints = measurement.joints
        if joints.shape[-1] != like.shape[-1]:
            return False, None, None  # e.g. delta actions beside a state of another size
        joints = joints.reshape(-1, like.shape[-1]).to(like)  # float32, as the commands
        if joints.shape[0] not in (1, like.shape[0]) or not torch.isfinite(joints).all():
            return True, None, None
        if not self._is_fresh(measurement, limits):
            return True, None, None
        lag = limits.capture_lag_steps if self.last_sent is not None else 0  # none sent since the reset: no lag
        steps = 1 + lag + sum(t > measurement.time for t in self._sent_times)
        reach = None if limits.max_delta is None else limits.max_delta.double() * steps
        return True, joints.expand_as(like).clone(), reach

    def _replace_non_finite(self, safe: torch.Tensor, fallback: torch.Tensor | None) -> torch.Tensor | None:
        bad = ~torch.isfinite(safe).all(dim=-1)
        if not bad.any():
            return safe
        if fallback is None:
            return None
        logger.warning("RoboAlign safety: non-finite action replaced by the last safe command (holding).")
        safe[bad] = fallback.to(safe).expand_as(safe)[bad]
        return safe

    def _clamp_to_limits(self, safe: torch.Tensor, limits: Limits) -> torch.Tensor:
        if limits.low is None:
            return safe
        return _clamp_between(safe, limits.low.double(), limits.high.double())

    def _clamp_to_previous(self, safe: torch.Tensor, limits: Limits) -> torch.Tensor:
        if limits.max_delta is None or self.last_sent is None:
            return safe
        previous, step = self.last_sent.double(), limits.max_delta.double()
        return _clamp_between(safe, previous - step, previous + step)

    def _clamp_to_measured(
        self, safe: torch.Tensor, measured: torch.Tensor | None, reach: torch.Tensor | None
    ) -> torch.Tensor:
        if measured is None or reach is None:
            return safe
        return _clamp_between(safe, measured.double() - reach, measured.double() + reach)

    # ---- bookkeeping ----------------------------------------------------------------------------
    def _hold(self, like: torch.Tensor, measured: torch.Tensor | None) -> torch.Tensor | None:
        """Repeat the last command; with none since the reset, stay at the measured joints (where the arm is,
        even outside the limits: commanding it moves nothing); else refuse."""
        self.holds += 1
        if self.last_sent is not None:
            return self._sent(self.last_sent.clone(), like)
        if measured is not None:
            return self._sent(measured.clone(), like)
        return None

    def _sent(self, safe: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        now = time.perf_counter()
        if self._last_send_time is not None:
            self._intervals.append(now - self._last_send_time)
        self.last_sent, self._last_send_time = safe.clone(), now
        self._sent_times.append(now)
        return safe.to(like.dtype if like.dtype.is_floating_point else torch.float32)


def _clamp_between(safe: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Clamp float32 ``safe`` into [low, high] (float64), rounded inwards: the float32 result that LeRobot
    hands on unchanged (tensor -> float -> tensor) is inside the exact bounds, not an ulp beyond them."""
    low32, high32 = low.float(), high.float()
    low32 = torch.where(low32.double() < low, torch.nextafter(low32, torch.full_like(low32, math.inf)), low32)
    high32 = torch.where(high32.double() > high, torch.nextafter(high32, torch.full_like(high32, -math.inf)), high32)
    return torch.maximum(torch.minimum(safe, high32.expand_as(safe)), low32.expand_as(safe))


class _Refused:
    """What a refused RTC row reads as: LeRobot's ``ActionQueue.get()`` returns ``row.clone()``, here None,
    which its engine reports as 'no action ready' (the arm keeps its last goal)."""

    def clone(self) -> None:
        return None


class GuardedRows(torch.Tensor):
    """A postprocessed RTC chunk whose rows pass a :class:`CommandGuard` when read one at a time.

    LeRobot's RTC engine keeps the chunk in its ``ActionQueue`` (slices, clones, concatenations keep this
    type) and its control loop takes each command with ``queue[i]`` (an int index of the 2-D queue): that
    read, in the control thread, is the last point before the motors that the plugin can reach.
    """

    _send: Callable[[torch.Tensor], torch.Tensor | None] | None = None

    @staticmethod
    def wrap(chunk: torch.Tensor, send: Callable[[torch.Tensor], torch.Tensor | None]) -> GuardedRows:
        rows = chunk.as_subclass(GuardedRows)
        rows._send = send
        return rows

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        source = _first_guarded(args)
        if func is torch.Tensor.__getitem__ and source is args[0] and _is_row_read(args[0], args[1]):
            with torch._C.DisableTorchFunctionSubclass():
                row = torch.Tensor.__getitem__(args[0], args[1])
            sent = source._send(row)
            return _Refused() if sent is None else sent
        result = super().__torch_function__(func, types, args, kwargs)
        for out in result if isinstance(result, (tuple, list)) else (result,):
            if isinstance(out, GuardedRows) and source is not None:
                out._send = source._send
        return result


def _is_row_read(rows: torch.Tensor, index: Any) -> bool:
    return isinstance(index, int) and not isinstance(index, bool) and rows.dim() == 2


def _first_guarded(args: Any) -> GuardedRows | None:
    for arg in args:
        if isinstance(arg, GuardedRows):
            return arg
        if isinstance(arg, (tuple, list)):
            found = _first_guarded(arg)
            if found is not None:
                return found
    return None


@ProcessorStepRegistry.register(name=MEASURED_STATE_STEP_NAME)
@dataclass
class RoboAlignMeasuredStateStep(ProcessorStep):
    """Preprocessor step: hands the raw ``observation.state`` (before normalisation) to the safety step.

    Without it the safety step could not know where the arm is, so it could not keep a command within
    ``max_delta`` of the measured joints, nor tell a fresh measurement from one taken before a reset.
    ``link`` is kept for checkpoints that name their policy (see :meth:`RoboAlignActionSafetyStep._check_link`).
    """

    link: str | None = None

    def __call__(self, transition: dict) -> dict:
        state = (transition.get(TransitionKey.OBSERVATION) or {}).get(OBS_STATE)
        note_measurement(None if state is None else torch.as_tensor(state).detach().to("cpu", torch.float32).clone())
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
    """The last word of the policy before the robot: every command passes a :class:`CommandGuard`.

    (B, A) actions (LeRobot's sync engine, ``lerobot-eval``, each action of the async server's chunk) are
    guarded here, in order. A (B, T, A) chunk (RTC engine) is returned as :class:`GuardedRows`: its rows are
    guarded when the engine's queue hands them to the control loop, since only then is it known which row
    follows which command (rows of a chunk computed before a reset wait for a measurement taken after it,
    and are then limited from there). Limits are plain lists in the saved config so an
    arm's calibrated ranges can be bound to a checkpoint (``roboalign calibration check --checkpoint``);
    the policy's ``--policy.safety_*`` settings override them at load time (docs/safety.md: precedence).

    Attributes:
        enabled: turn the whole step off (not advised on a real arm).
        max_delta: largest change of a command per control step, one value or one per joint (joint units:
            degrees on SO-100/101 joints, 0..100 on their gripper; -100..100 over the calibrated range on Koch).
        joint_min / joint_max: per-joint limits; ``None`` derives them from ``dataset_stats``.
        limit_margin: widening of dataset-derived limits, as a fraction of each joint's range.
        anchor_to_state: actions are absolute targets in the units of ``observation.state`` (true for
            SO-100/101/Koch joint-position control; delta actions are never compared to the state).
        max_measurement_age_s: a measurement older than this is none: the arm holds.
        link: the ``safety_link`` of the policy saved with this step (a mismatch is refused).
        dataset_stats: LeRobot stats, only read at construction (not saved).
    """

    enabled: bool = True
    max_delta: float | list[float] | None = None
    joint_min: list[float] | None = None
    joint_max: list[float] | None = None
    limit_margin: float = 0.05
    anchor_to_state: bool = True
    max_measurement_age_s: float = DEFAULT_MAX_MEASUREMENT_AGE_S
    link: str | None = None
    dataset_stats: dict[str, dict[str, Any]] | None = field(default=None, repr=False)
    _guard: CommandGuard = field(default_factory=CommandGuard, init=False, repr=False)
    _own: SafetyContext = field(default_factory=SafetyContext, init=False, repr=False)
    _saved: dict[str, Any] = field(default_factory=dict, init=False, repr=False)
    _seen_overrides: tuple[int, int] | None = field(default=None, init=False, repr=False)
    _seen_episode: tuple[int, int] | None = field(default=None, init=False, repr=False)
    _warned_no_state: bool = field(default=False, init=False, repr=False)
    _pin_next: bool = field(default=False, init=False, repr=False)

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
        if not (math.isfinite(self.max_measurement_age_s) and self.max_measurement_age_s > 0):
            raise ValueError(
                f"RoboAlign safety: max_measurement_age_s must be finite and > 0 (got {self.max_measurement_age_s})."
            )
        self._saved = {k: getattr(self, k) for k in OVERRIDABLE}
        self._own.link = self.link

    def get_config(self) -> dict[str, Any]:
        return {
            "enabled": self._saved["enabled"],
            "max_delta": self._saved["max_delta"],
            "joint_min": self._saved["joint_min"],
            "joint_max": self._saved["joint_max"],
            "limit_margin": self.limit_margin,
            "anchor_to_state": self.anchor_to_state,
            "max_measurement_age_s": self.max_measurement_age_s,
            "link": self.link,
        }

    def reset(self) -> None:
        """New episode (LeRobot's engines reset the postprocessor): the next command starts from a fresh
        measurement; anything measured before now (an inference in flight) moves nothing."""
        self._guard.reset()
        self._pin_next = False

    def start_chunk_at_observation(self) -> None:
        """The next actions are a chunk whose first one is for the observation's own time step.

        LeRobot's async server labels it so, and the client has executed that step already: that action is
        the measured position, and the chunk moves at most ``max_delta`` per step from there.
        """
        self.reset()
        self._pin_next = True

    def transform_features(
        self, features: dict[PipelineFeatureType, dict[str, PolicyFeature]]
    ) -> dict[PipelineFeatureType, dict[str, PolicyFeature]]:
        return features

    def action(self, action: PolicyAction) -> PolicyAction:
        context = current_context(self._own)
        self._check_link(context)
        self._sync_overrides(context)
        self._follow_resets(context)
        self._guard.observe(context.measurement)
        self._guard.ever_measured = self._guard.ever_measured or context.measures
        hold, context.hold = context.hold, False
        if not self.enabled:
            return action
        if action.ndim == 3:
            return self._guard_rows(action, context)
        hold, self._pin_next = hold or self._pin_next, False
        safe = self._guard.command(action, self._limits(action), hold=hold)
        self._warn_if_unanchored()
        if safe is None:
            raise RuntimeError(
                "RoboAlign safety: no safe target (the action is not finite, or there is no fresh joint "
                "measurement, and nothing was sent since the reset to hold at); refusing to command the arm. "
                "Check the robot's observation.state and the checkpoint's normalisation stats."
            )
        return safe

    def _guard_rows(self, chunk: torch.Tensor, context: SafetyContext) -> GuardedRows:
        """An RTC chunk, guarded row by row when the engine's queue hands a row to the control loop (where a
        ``policy.reset()`` since the chunk was made also restarts the guard). Non-finite rows (the policy's
        hold after a dropped chunk, rtc.hold_chunk) repeat the last command: the arm stops where it is."""

        def send(row: torch.Tensor) -> torch.Tensor | None:
            self._follow_resets(context)
            limits = dataclasses.replace(self._limits(row[None]), capture_lag_steps=1)
            sent = self._guard.command(row[None], limits) if self.enabled else row[None]
            return None if sent is None else sent[0]

        return GuardedRows.wrap(chunk, send)

    def _limits(self, like: torch.Tensor) -> Limits:
        dim = like.shape[-1]
        low, high = _per_joint(self.joint_min, dim, "joint_min"), _per_joint(self.joint_max, dim, "joint_max")
        return Limits(_per_joint(self.max_delta, dim, "max_delta"), low, high, self.anchor_to_state,
                      self.max_measurement_age_s)  # fmt: skip

    def _warn_if_unanchored(self) -> None:
        if self._warned_no_state or self.max_delta is None or self._guard.anchored:
            return
        self._warned_no_state = True
        logger.warning(
            "RoboAlign safety: no measured joint position matching the action (%s), so commands are not compared "
            "with the measured joints and the first one after a reset is clamped but not rate-limited.",
            "anchor_to_state=false" if not self.anchor_to_state else "no observation.state of that size",
        )

    def _check_link(self, context: SafetyContext) -> None:
        if self.link and context.link and context.link != self.link:
            raise ValueError(
                f"RoboAlign safety: this postprocessor was saved with another policy (safety_link {self.link}, "
                f"the policy's is {context.link}). Load the policy and its processors from the same "
                "pretrained_model directory."
            )

    def _follow_resets(self, context: SafetyContext) -> None:
        """``policy.reset()`` alone (``lerobot-eval``) starts a new episode for this step too."""
        seen = (id(context), context.episode)
        if self._seen_episode is not None and seen != self._seen_episode and seen[0] == self._seen_episode[0]:
            self._guard.reset(at=context.reset_time)  # a pin set since (the async server's next chunk) stays
        self._seen_episode = seen

    def _sync_overrides(self, context: SafetyContext) -> None:
        """Apply the policy's ``--policy.safety_*`` over the saved settings; log which limits are in force."""
        seen = (id(context), context.overrides_version)
        if seen == self._seen_overrides:
            return
        settings = {**self._saved, **context.overrides}
        validate_limits(settings["max_delta"], settings["joint_min"], settings["joint_max"])
        for key, value in settings.items():
            setattr(self, key, value)
        self._seen_overrides = seen
        given = sorted(context.overrides) or "none"
        logger.info(
            "RoboAlign safety in force: enabled=%s max_delta=%s joint_min=%s joint_max=%s (overridden by "
            "--policy.safety_*: %s; the rest from the checkpoint's policy_postprocessor.json)",
            self.enabled, self.max_delta, _fmt(self.joint_min), _fmt(self.joint_max), given,
        )  # fmt: skip


def _fmt(values: list[float] | None) -> str:
    return "None" if values is None else "[" + ", ".join(f"{v:.4g}" for v in values) + "]"
