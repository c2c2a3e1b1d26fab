"""Safety between a RoboAlign policy and a real arm's motors: one invariant at the last point before them.

The invariant (docs/safety.md): every command sent is finite; within ``max_delta`` of the previous command sent
and within ``max_delta`` per control step of the latest joints measured after the last reset; and inside the
joint limits, except on a joint measured outside them, where it moves back toward the range by at most
``max_delta`` per step. A chunk computed from an observation captured before the last reset, or whose inference
took longer than ``max_measurement_age_s`` from the observation's capture, moves nothing: the arm holds (the last
command, or the measured joints before any command) until a fresh chunk arrives. :class:`CommandGuard` enforces
it, one command at a time, where each entry point hands a command to the robot:

* ``lerobot-rollout`` (sync), ``lerobot-eval``, DAgger on the sync engine, the async server: the
  postprocessor's :class:`RoboAlignActionSafetyStep` on each (B, A) action;
* ``lerobot-rollout --inference.type=rtc`` (and DAgger on it): the step returns the chunk as
  :class:`GuardedRows`, whose rows pass the guard when LeRobot's ``ActionQueue.get()`` hands one to the
  control loop; the engine (rtc.RoboAlignRTCEngine) hands the guard every observation the control loop reads,
  stamped with its capture, so each row is checked against the joints read that tick;
* the async client: :class:`lerobot_roboalign.async_inference.RoboAlignRobotClient`, after LeRobot's chunk
  aggregation, with the joints read from the bus right before each command.

Freshness is the observation's own: a :class:`Measurement` carries its capture time and its place in the order of
captures and resets, from the robot read to the guard. The policy, its preprocessor and its postprocessor are
loaded apart and meet through the data: :class:`RoboAlignMeasuredStateStep` puts the measurement in the batch
the policy receives, the policy instance takes it into its own :class:`SafetyContext` (its ``--policy.safety_*``
settings, its resets, its chunk) and tags its output with that context, which the safety step reads. So any
interleaving of several policies in one thread keeps their contexts apart.
"""

from __future__ import annotations

import itertools
import logging
import math
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
MEASUREMENT_KEY = "roboalign_measurement"  # in the preprocessed batch: the measurement travels with its data
OVERRIDABLE = ("enabled", "max_delta", "joint_min", "joint_max", "max_measurement_age_s")
# From an observation's capture to its chunk's arrival; over it the chunk moves nothing (the arm holds). It covers a
# 7B's first forward on a GPU (CUDA context, autotuning): docs/safety.md.
DEFAULT_MAX_MEASUREMENT_AGE_S = 5.0
# Above this max_delta (joint units per control step: 900 deg/s at 30 fps, beyond an SO-101's or Koch's servos)
# the rate limit no longer limits anything a real arm can do: warned.
MAX_DELTA_CEILING = 30.0

clock: Callable[[], float] = time.perf_counter  # every safety timestamp (tests inject their own clock)
_ORDER = itertools.count(1)  # captures and resets, numbered in the order they happen (any thread)


@dataclass(frozen=True)
class Measurement:
    """Joint positions from one observation (raw ``observation.state``), when they were captured (the robot read,
    on :data:`clock`) and their place among captures and resets (``order``: a capture before a reset is lower)."""

    joints: torch.Tensor | None
    time: float
    order: int = 0


def capture(joints: torch.Tensor | None) -> Measurement:
    """A measurement captured now."""
    return Measurement(joints, clock(), next(_ORDER))


def reset_mark() -> int:
    """A reset's place in the order: measurements captured before it are lower."""
    return next(_ORDER)


_LOCAL = threading.local()  # per thread: a capture read from a stamped observation, the last measurement/context


class StampedObservation(dict):
    """A robot observation with its :class:`Measurement` (taken by the control loop when it read the robot).

    LeRobot's RTC engine builds its inference batch from the held observation in its own thread (reading the
    values with ``obs[key]``); that read hands the capture to the thread's next :class:`RoboAlignMeasuredStateStep`,
    so a measurement's time and order are those of the robot read, not of the preprocessing.
    """

    def __init__(self, observation: dict, measurement: Measurement) -> None:
        super().__init__(observation)
        self.measurement = measurement

    def __getitem__(self, key: Any) -> Any:
        _LOCAL.capture = self.measurement
        return super().__getitem__(key)


def measure(joints: torch.Tensor | None) -> Measurement:
    """The measurement of the state a preprocessor sees: the capture of the stamped observation it was built from
    (same joint values), else captured now (the sync engine preprocesses right after its robot read)."""
    stamp, _LOCAL.capture = getattr(_LOCAL, "capture", None), None
    if stamp is not None and _same_joints(stamp.joints, joints):
        return Measurement(joints, stamp.time, stamp.order)
    return capture(joints)


def _same_joints(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    return a is not None and b is not None and a.numel() == b.numel() and torch.equal(a.flatten(), b.flatten())


@dataclass
class ChunkStamp:
    """The observation a chunk was computed from, and when the chunk reached the safety step."""

    capture: Measurement | None
    ready: float | None = None
    logged: bool = False


@dataclass
class SafetyContext:
    """What one policy instance shares with the processor steps that run around it (one per policy)."""

    link: str | None = None
    measurement: Measurement | None = None
    overrides: dict[str, Any] = field(default_factory=dict)  # --policy.safety_* given for this run
    overrides_version: int = 0
    sources: dict[str, str] = field(default_factory=dict)  # where each setting not overridden comes from
    episode: int = 0
    reset_order: int = 0  # the policy's last reset (measurements captured before it are stale)
    measures: bool = False  # joint measurements reach this policy (kept across resets)
    hold: bool = False  # the policy's blender is holding: the next command repeats the last one
    chunk: ChunkStamp | None = None  # the chunk the next actions come from

    def enter(self, batch: dict | None = None, chunk: bool = False) -> None:
        """The policy runs on ``batch``: take its measurement (``chunk``: a new chunk is computed from it)."""
        measurement = batch.get(MEASUREMENT_KEY) if isinstance(batch, dict) else None
        if measurement is None:
            measurement, _LOCAL.measurement = getattr(_LOCAL, "measurement", None), None
        if measurement is not None:
            self.measurement = measurement
            self.measures = self.measures or measurement.joints is not None
        if chunk:
            self.chunk = ChunkStamp(self.measurement)
        _LOCAL.context = self

    def tag(self, action: torch.Tensor) -> torch.Tensor:
        """The policy's output, carrying this context to the safety step (through LeRobot's unnormaliser)."""
        tagged = action.as_subclass(PolicyOutput)
        tagged.context = self
        return tagged

    def publish_overrides(self, overrides: dict[str, Any], sources: dict[str, str] | None = None) -> None:
        self.overrides = {k: v for k, v in overrides.items() if v is not None}
        self.sources = dict(sources or {})
        self.overrides_version += 1

    def new_episode(self) -> None:
        """The env / arm was reset: forget the measurement and the chunk; safety steps restart at their next
        command, and anything captured before now is stale."""
        self.measurement = None
        self.chunk = None
        self.hold = False
        self.episode += 1
        self.reset_order = reset_mark()


class PolicyOutput(torch.Tensor):
    """A policy's action tensor tagged with its :class:`SafetyContext`; arithmetic (LeRobot's unnormaliser) keeps
    the tag, everything else returns plain tensors."""

    context: SafetyContext | None = None

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        with torch._C.DisableTorchFunctionSubclass():
            result = func(*args, **(kwargs or {}))
        source = next((a for a in args if isinstance(a, PolicyOutput)), None)
        if source is None or not isinstance(result, torch.Tensor) or func not in _KEEPS_TAG:
            return result
        return source.context.tag(result)


_KEEPS_TAG = {
    getattr(torch.Tensor, name)
    for name in ("__mul__", "__rmul__", "__add__", "__radd__", "__sub__", "__rsub__", "__truediv__", "mul", "add",
                 "sub", "div", "to", "float", "clone", "detach", "contiguous")  # fmt: skip
} | {torch.mul, torch.add, torch.sub, torch.div}


def note_measurement(joints: torch.Tensor | None) -> Measurement:
    """Preprocessor side: a new observation's measurement (also left for a policy that is not handed the batch)."""
    measurement = measure(joints)
    _LOCAL.measurement, _LOCAL.context = measurement, None
    return measurement


def context_of(action: torch.Tensor, fallback: SafetyContext) -> SafetyContext:
    """The context of the policy that computed ``action``; else the one that ran last in this thread; else
    ``fallback`` (a step used without a policy)."""
    context = getattr(action, "context", None) or getattr(_LOCAL, "context", None)
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


def validate_max_delta(max_delta: float | list[float] | None, required: bool = True) -> None:
    """Refuse a rate limit that is missing (``required``), not finite or not > 0; warn above a servo's reach."""
    if max_delta is None:
        if required:
            raise ValueError(
                "RoboAlign safety: max_delta is null, so nothing would limit how far a command moves per step. "
                "Set --policy.safety_max_delta (joint units per control step, e.g. 5.0) or max_delta in the "
                "checkpoint's policy_postprocessor.json (`roboalign calibration check FILE --robot.type=... "
                "--checkpoint=... --max_delta=5`), or --policy.safety_enabled=false to disable the step."
            )
        return
    deltas = torch.as_tensor(max_delta, dtype=torch.float64).flatten()
    if not (deltas.numel() and torch.isfinite(deltas).all() and (deltas > 0).all()):
        raise ValueError(
            f"RoboAlign safety: max_delta must be finite and > 0 for every joint (got {max_delta}); "
            "it is the largest change of a target per control step, in joint units. "
            "Set --policy.safety_max_delta to e.g. 5.0, or --policy.safety_enabled=false to disable "
            "the step."
        )
    if (deltas > MAX_DELTA_CEILING).any():
        logger.warning(
            "RoboAlign safety: max_delta %s is above %s joint units per control step (900 deg/s at 30 fps, beyond "
            "the servos): the rate limit then limits nothing a real arm can do. 5 is a usual value.",
            max_delta, MAX_DELTA_CEILING,
        )  # fmt: skip


def validate_limits(
    max_delta: float | list[float] | None,
    joint_min: list[float] | None,
    joint_max: list[float] | None,
    dim: int | None = None,
    required: bool = False,
) -> None:
    """Refuse limits that let a bad target through or force motion (NaN, inf, max_delta <= 0 or missing when
    ``required``, min > max, a count other than 1 or ``dim`` values)."""
    validate_max_delta(max_delta, required)
    if (joint_min is None) != (joint_max is None):
        raise ValueError("RoboAlign safety: give both joint_min and joint_max, or neither.")
    if dim is not None:
        for name, value in (("max_delta", max_delta), ("joint_min", joint_min), ("joint_max", joint_max)):
            _per_joint(value, dim, name)
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


def validate_max_measurement_age(seconds: float | None) -> None:
    if seconds is not None and not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(
            f"RoboAlign safety: max_measurement_age_s must be finite and > 0 (got {seconds}); it is the longest "
            f"time from an observation's capture to its chunk, in seconds (default {DEFAULT_MAX_MEASUREMENT_AGE_S})."
        )


def limits_from_stats(stats: dict[str, Any], margin: float) -> tuple[list[float], list[float]]:
    """Joint limits from a dataset's action min/max, widened by ``margin`` of each joint's range."""
    if not (math.isfinite(margin) and margin >= 0):
        raise ValueError(f"RoboAlign safety: limit_margin must be finite and >= 0 (got {margin}).")
    low = torch.as_tensor(stats["min"], dtype=torch.float32).flatten()
    high = torch.as_tensor(stats["max"], dtype=torch.float32).flatten()
    pad = (high - low) * margin
    return (low - pad).tolist(), (high + pad).tolist()


def within_age(age_s: float, limit_s: float) -> bool:
    """The one age rule (a measurement's, a chunk's inference): at most ``max_measurement_age_s``."""
    return age_s <= limit_s


@dataclass
class Limits:
    """The settings in force for one command (after ``--policy.safety_*`` overrides)."""

    max_delta: torch.Tensor | None
    low: torch.Tensor | None
    high: torch.Tensor | None
    anchor_to_state: bool = True
    max_measurement_age_s: float = DEFAULT_MAX_MEASUREMENT_AGE_S


class CommandGuard:
    """The invariant, one command at a time, in the order the arm receives them.

    Clamps, in order (each a method: the seams the mutation test removes one at a time): ``_is_fresh`` (a
    measurement captured before the last :meth:`reset`, or more than ``max_measurement_age_s`` ago, is none),
    ``_hold`` (a held command: the last command sent, else the joints measured since the reset; refused with
    neither), ``_replace_non_finite``, ``_clamp_to_limits``, ``_clamp_to_previous`` (max_delta from the previous
    command sent), ``_clamp_to_measured`` (max_delta per command sent since the measurement's capture, from the
    measured joints; applied last, so where the arm is away from the last command (a stalled arm, a human
    correction, an arm outside the limits) the command follows the arm, not the stale command).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.ever_measured = False  # measurements exist for this arm (kept across resets)
        self.reset()

    def reset(self, order: int | None = None) -> None:
        """Forget the commands sent and the measurement; measurements captured before the reset (``order``: the
        policy's reset, else now) are stale."""
        with getattr(self, "_lock", threading.Lock()):
            self.last_sent: torch.Tensor | None = None
            self.measurement: Measurement | None = None
            self.reset_order = reset_mark() if order is None else order
            self.anchored = False  # the last command was compared with a measurement
            self._sent_orders: deque[int] = deque(maxlen=4096)
            self.holds = 0  # commands held (a stale chunk, the policy's blender holds, no fresh measurement)

    def observe(self, measurement: Measurement | None) -> None:
        """The newest measurement (by capture order); whether it is fresh enough is decided per command."""
        if measurement is None or measurement.joints is None:
            return
        with self._lock:
            self.ever_measured = True
            if self.measurement is None or measurement.order >= self.measurement.order:
                self.measurement = measurement

    def since_reset(self, measurement: Measurement | None) -> bool:
        return measurement is not None and measurement.order > self.reset_order

    def _is_fresh(self, measurement: Measurement, limits: Limits) -> bool:
        """Captured after the last reset, and at most ``max_measurement_age_s`` ago."""
        return self.since_reset(measurement) and within_age(clock() - measurement.time, limits.max_measurement_age_s)

    def command(self, target: torch.Tensor, limits: Limits, hold: bool = False) -> torch.Tensor | None:
        """The (B, A) command to send for ``target``, or None: refused (nothing known to hold at)."""
        with self._lock:
            safe = target.detach().to("cpu", torch.float32).clone()
            if self.last_sent is not None and self.last_sent.shape != safe.shape:
                self.last_sent = None  # a new batch of envs (e.g. lerobot-eval's last, smaller batch)
            applies, measured, reach = self._fresh_measurement(safe, limits)
            self.anchored = applies
            if hold or (applies and measured is None):
                return self._hold(safe, measured, reach)
            fallback = self.last_sent if self.last_sent is not None else measured
            safe = self._replace_non_finite(safe, fallback)
            if safe is None:
                return None
            safe = self._clamp_to_limits(safe, limits)
            safe = self._clamp_to_previous(safe, limits)
            safe = self._clamp_to_measured(safe, measured, reach)
            return self._sent(safe, target)

    # ---- the clamps --------------------------------------------------------------------------------
    def _joints_like(self, measurement: Measurement | None, like: torch.Tensor) -> torch.Tensor | None:
        """The measured joints as (B, A) commands, or None (no measurement, another batch, not finite)."""
        if measurement is None:
            return None
        joints = measurement.joints
        if joints.shape[-1] != like.shape[-1]:
            raise ValueError(
                f"RoboAlign safety: observation.state has {joints.shape[-1]} values but the action has "
                f"{like.shape[-1]}, so a command cannot be compared with the measured joints. For joint-position "
                "actions record observation.state with the action's joints (same order); for actions that are not "
                "joint positions set anchor_to_state: false in the checkpoint's policy_postprocessor.json."
            )
        joints = joints.reshape(-1, like.shape[-1]).to(like)  # float32, as the commands
        if joints.shape[0] not in (1, like.shape[0]) or not torch.isfinite(joints).all():
            return None
        return joints.expand_as(like).clone()

    def _fresh_measurement(
        self, like: torch.Tensor, limits: Limits
    ) -> tuple[bool, torch.Tensor | None, torch.Tensor | None]:
        """(measurement applies to these commands, the fresh measured joints or None, how far from them).

        It applies to absolute joint targets (``anchor_to_state``) once measurements exist; then a measurement
        captured before the last reset or more than ``max_measurement_age_s`` ago is no measurement.
        """
        if not (limits.anchor_to_state and self.ever_measured):
            return False, None, None
        measurement = self.measurement
        joints = self._joints_like(measurement, like)
        if joints is None or not self._is_fresh(measurement, limits):
            return True, None, None
        steps = 1 + sum(order > measurement.order for order in self._sent_orders)
        reach = None if limits.max_delta is None else limits.max_delta.double() * steps
        return True, joints, reach

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
    def _hold(
        self, like: torch.Tensor, measured: torch.Tensor | None, reach: torch.Tensor | None
    ) -> torch.Tensor | None:
        """Repeat the last command (kept within reach of fresh measured joints: a stalled or pushed arm is not
        pushed back); with none since the reset, stay at the joints measured since it, whatever their age (where
        the arm is, even outside the limits: commanding it there moves nothing); else refuse."""
        self.holds += 1
        if self.last_sent is not None:
            return self._sent(self._clamp_to_measured(self.last_sent.clone(), measured, reach), like)
        if measured is None and self.since_reset(self.measurement):
            measured = self._joints_like(self.measurement, like)
        if measured is not None:
            return self._sent(measured.clone(), like)
        return None

    def _sent(self, safe: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        self.last_sent = safe.clone()
        self._sent_orders.append(next(_ORDER))
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
    ``max_delta`` of the measured joints, nor tell a fresh measurement from one captured before a reset. The
    :class:`Measurement` goes into the batch (``MEASUREMENT_KEY``), for the policy that runs on it.
    ``link`` is kept for checkpoints that name their policy (see :meth:`RoboAlignActionSafetyStep._check_link`).
    """

    link: str | None = None

    def __call__(self, transition: dict) -> dict:
        state = (transition.get(TransitionKey.OBSERVATION) or {}).get(OBS_STATE)
        joints = None if state is None else torch.as_tensor(state).detach().to("cpu", torch.float32).clone()
        measurement = note_measurement(joints)
        complementary = {**(transition.get(TransitionKey.COMPLEMENTARY_DATA) or {}), MEASUREMENT_KEY: measurement}
        return {**transition, TransitionKey.COMPLEMENTARY_DATA: complementary}

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
    follows which command and what the arm measured that tick. Limits are plain lists in the saved config so an
    arm's calibrated ranges can be bound to a checkpoint (``roboalign calibration check --checkpoint``);
    the policy's ``--policy.safety_*`` settings override them at load time (docs/safety.md: precedence).

    Attributes:
        enabled: turn the whole step off (not advised on a real arm).
        max_delta: largest change of a command per control step, one value or one per joint (joint units:
            degrees on SO-100/101 joints, 0..100 on their gripper; -100..100 over the calibrated range on Koch).
            Required while enabled.
        joint_min / joint_max: per-joint limits; ``None`` derives them from ``dataset_stats``.
        limit_margin: widening of dataset-derived limits, as a fraction of each joint's range.
        anchor_to_state: actions are absolute targets in the units of ``observation.state`` (true for
            SO-100/101/Koch joint-position control; then the state must have the action's size).
        max_measurement_age_s: the longest time from an observation's capture to its chunk (and the oldest
            measurement a command is compared with); over it the arm holds.
        link: the ``safety_link`` of the policy saved with this step (a mismatch is refused).
        bound: the settings ``roboalign calibration check --checkpoint`` wrote (named in the log's sources).
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
    bound: list[str] | None = None
    dataset_stats: dict[str, dict[str, Any]] | None = field(default=None, repr=False)
    _guard: CommandGuard = field(default_factory=CommandGuard, init=False, repr=False)
    _own: SafetyContext = field(default_factory=SafetyContext, init=False, repr=False)
    _saved: dict[str, Any] = field(default_factory=dict, init=False, repr=False)
    _seen_overrides: tuple[int, int] | None = field(default=None, init=False, repr=False)
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
        if self.enabled and self.max_delta is None:
            validate_max_delta(None)
        validate_max_measurement_age(self.max_measurement_age_s)
        self._saved = {k: getattr(self, k) for k in OVERRIDABLE}
        self._own.link = self.link

    def get_config(self) -> dict[str, Any]:
        return {
            **{key: self._saved[key] for key in OVERRIDABLE},
            "limit_margin": self.limit_margin,
            "anchor_to_state": self.anchor_to_state,
            "link": self.link,
            "bound": self.bound,
        }

    def reset(self) -> None:
        """New episode (LeRobot's engines reset the postprocessor): the next command starts from a measurement
        captured after now; anything captured before (an inference in flight) moves nothing."""
        self._guard.reset()
        self._pin_next = False

    def observe_tick(self, measurement: Measurement) -> None:
        """A measurement the control loop took (rtc.RoboAlignRTCEngine, each tick): the next rows are checked
        against it."""
        self._guard.observe(measurement)

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
        context = context_of(action, self._own)
        action = action.as_subclass(torch.Tensor)
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
        hold, self._pin_next = hold or self._pin_next or self._stale(context.chunk), False
        safe = self._guard.command(action, self._limits(action), hold=hold)
        self._warn_if_unanchored()
        if safe is None:
            raise RuntimeError(
                "RoboAlign safety: the first action since the reset is not finite and no joint position was "
                "measured since the reset to hold at; refusing to command the arm. Check the checkpoint (NaN "
                "weights?), its normalisation stats and the robot's observation.state."
            )
        return safe

    def _stale(self, chunk: ChunkStamp | None) -> bool:
        """The chunk's observation was captured before the last reset, or its inference took longer than
        ``max_measurement_age_s`` from that capture (logged once per chunk, with the time it took)."""
        if chunk is None or chunk.capture is None or not (self.anchor_to_state and self._guard.ever_measured):
            return False
        if chunk.ready is None:
            chunk.ready = clock()
        if not self._guard.since_reset(chunk.capture):
            return True
        took = chunk.ready - chunk.capture.time
        if within_age(took, self.max_measurement_age_s):
            return False
        if not chunk.logged:
            chunk.logged = True
            logger.warning(
                "RoboAlign safety: inference took %.1f s from the observation's capture, over the %g s limit "
                "(safety_max_measurement_age_s): holding the arm until a fresh chunk arrives.",
                took, self.max_measurement_age_s,
            )  # fmt: skip
        return True

    def _guard_rows(self, chunk: torch.Tensor, context: SafetyContext) -> GuardedRows:
        """An RTC chunk, guarded row by row when the engine's queue hands a row to the control loop (where a
        ``policy.reset()`` since the chunk was made also restarts the guard). Rows of a stale chunk hold, and
        non-finite rows (the policy's hold after a dropped chunk, rtc.hold_chunk) repeat the last command."""
        stamp = context.chunk

        def send(row: torch.Tensor) -> torch.Tensor | None:
            self._follow_resets(context)
            if not self.enabled:
                return row
            sent = self._guard.command(row[None], self._limits(row[None]), hold=self._stale(stamp))
            return None if sent is None else sent[0]

        if stamp is not None and stamp.ready is None:
            stamp.ready = clock()
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
            "RoboAlign safety: commands are not compared with measured joints (%s), so the first one after a reset "
            "is clamped but not rate-limited.",
            "anchor_to_state=false" if not self.anchor_to_state else "no observation.state",
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
        if context.reset_order > self._guard.reset_order:
            pin = self._pin_next
            self._guard.reset(order=context.reset_order)
            self._pin_next = pin  # a pin set since (the async server's next chunk) stays

    def _sync_overrides(self, context: SafetyContext) -> None:
        """Apply the policy's ``--policy.safety_*`` over the saved settings; log each setting and its source."""
        seen = (id(context), context.overrides_version)
        if seen == self._seen_overrides:
            return
        settings = {**self._saved, **context.overrides}
        validate_limits(settings["max_delta"], settings["joint_min"], settings["joint_max"],
                        required=settings["enabled"])  # fmt: skip
        validate_max_measurement_age(settings["max_measurement_age_s"])
        for key, value in settings.items():
            setattr(self, key, value)
        self._seen_overrides = seen
        logger.info(
            "RoboAlign safety in force: %s",
            "; ".join(f"{key}={_fmt(settings[key])} ({self._source(key, context)})" for key in OVERRIDABLE),
        )

    def _source(self, key: str, context: SafetyContext) -> str:
        if key in context.overrides:
            return f"--policy.safety_{key}"
        if key in (self.bound or []) or key in context.sources:
            return f"bound by `roboalign calibration check`, in policy_postprocessor.json{context.sources.get(key, '')}"
        return "policy_postprocessor.json, as saved at training"


def _fmt(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(f"{v:.4g}" for v in value) + "]"
    return str(value)
