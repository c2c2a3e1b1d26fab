"""Real-Time Chunking for the flow-matching head: continue the chunk the arm is executing.

LeRobot's RTC engine (``lerobot-rollout --inference.type=rtc``) predicts the next chunk in a
background thread while the arm runs the previous one, and passes the previous chunk's
unexecuted actions (``prev_chunk_left_over``) plus the latency in control steps
(``inference_delay``). Two ways to make the new chunk continue them:

* ``guided`` (Black et al. 2025, the RTC paper): LeRobot's :class:`RTCProcessor` pulls the
  clean-action estimate towards the prefix with weights that are 1 for the first
  ``inference_delay`` steps and decay to 0 at the execution horizon.
* ``hard`` (GR00T N1.7 in LeRobot): the overlap starts at the prefix instead of noise; the
  first ``inference_delay`` steps are frozen (velocity 0) and the rest of the overlap is
  released by an exponential ramp, so those steps equal the prefix exactly.

Time conventions: this head integrates from noise at s = 0 to the action at s = 1 with
v = action - noise; LeRobot's processor is written for pi0 (time 1 = noise, v = noise - action).
So pi0 time = 1 - s and pi0 velocity = -v; with those the processor's clean estimate
x - time * v_pi0 = x + (1 - s) * v is this head's, and its guided velocity is negated back.

Safety under RTC (safety.py): :class:`RoboAlignRTCEngine` is LeRobot's engine whose control loop also hands each
observation it reads, stamped with its capture, to the policy's safety step.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from lerobot.policies.rtc import RTCProcessor
from lerobot.utils.constants import OBS_STATE
from torch import Tensor

from .safety import RoboAlignActionSafetyStep, StampedObservation, capture

logger = logging.getLogger(__name__)
RTC_MODES = ("guided", "hard")
_FROZE: list[bool] = []  # freeze_loaded_heap ran in this process
Velocity = Callable[[Tensor], Tensor]


def freeze_loaded_heap() -> None:
    """Take the loaded model's objects out of Python's cyclic garbage collector, once per process.

    A full collection walks every tracked object; with a model, its tokenizer and transformers loaded
    that took about 250 ms on this machine's CPU, and it came during the control loop at a random
    chunk: the arm stood still for 8 control periods at 30 fps and the engine then skipped the
    actions it believed executed. Frozen objects are never collected (``gc.freeze``); what is
    allocated later is collected as usual.
    """
    if _FROZE:
        return
    start = time.perf_counter()
    gc.collect()
    gc.freeze()
    _FROZE.append(True)
    logger.info("RTC: froze %d loaded objects out of the garbage collector (%.0f ms)",
                gc.get_freeze_count(), (time.perf_counter() - start) * 1e3)  # fmt: skip


def prepare_rtc_rollout() -> None:
    """LeRobot's RTC engine is about to be built for this policy: freeze the heap, use the guarded engine."""
    freeze_loaded_heap()
    use_guarded_rtc_engine()


def use_guarded_rtc_engine() -> type:
    """Make ``lerobot-rollout --inference.type=rtc`` build :class:`RoboAlignRTCEngine` (LeRobot's factory builds the
    engine by its module-level name, as the async server and client are built). Its extra work is for the
    RoboAlign safety step; with any other policy it is LeRobot's engine."""
    from lerobot.rollout.inference import factory

    if not _ENGINE:
        _ENGINE.append(_guarded_engine_class(factory.RTCInferenceEngine))
    factory.RTCInferenceEngine = _ENGINE[0]
    return _ENGINE[0]


_ENGINE: list[type] = []


def _guarded_engine_class(engine: type) -> type:
    class RoboAlignRTCEngine(engine):
        """LeRobot's RTC engine whose control loop hands every observation it reads to the safety step.

        Each observation is stamped with its capture (time and order among captures and resets) when the
        control loop notifies it: the safety step checks the next rows against those joints (every tick, not once
        per inference), and the inference thread's measurement of that observation keeps the stamp, so a chunk
        computed from an observation captured before a reset is known as such whatever the timing.
        """

        def notify_observation(self, obs: dict) -> None:
            measurement = capture(self._measured_joints(obs))
            for step in self._postprocessor.steps:
                if isinstance(step, RoboAlignActionSafetyStep):
                    step.observe_tick(measurement)
            super().notify_observation(StampedObservation(obs, measurement))

        def _measured_joints(self, obs: dict) -> Tensor | None:
            names = (self._hw_features.get(OBS_STATE) or {}).get("names")
            if not names or any(name not in obs for name in names):
                return None
            return torch.tensor([[float(dict.__getitem__(obs, name)) for name in names]], dtype=torch.float32)

    return RoboAlignRTCEngine


def prefix_batch(prev_chunk_left_over: Tensor, batch_size: int, action_dim: int) -> Tensor | None:
    """(B, P, A) prefix without LeRobot's zero padding nor the held rows of :func:`hold_chunk`, or None.

    LeRobot's engine pads short leftovers with exact zero rows (a fixed shape for compiled
    calls); a real normalised action of all exact zeros does not occur, so trailing zero rows
    are padding and must not be treated as actions to continue (GR00T N1.7 strips them too).
    """
    prefix = prev_chunk_left_over.float()
    prefix = prefix[None] if prefix.ndim == 2 else prefix
    if prefix.ndim != 3 or prefix.shape[-1] != action_dim:
        raise ValueError(
            f"prev_chunk_left_over has shape {tuple(prev_chunk_left_over.shape)}; expected (T, {action_dim}) or "
            f"(B, T, {action_dim}) in the policy's normalised action space."
        )
    rows = ((prefix != 0) & torch.isfinite(prefix)).any(dim=-1).any(dim=0).nonzero()  # not padding, not a hold
    if rows.numel() == 0:
        return None
    prefix = prefix[:, : int(rows[-1]) + 1]
    return prefix.expand(batch_size, -1, -1) if prefix.shape[0] == 1 else prefix


@dataclass
class Inpainting:
    """How one chunk continues a prefix: a starting point and a velocity correction per Euler step."""

    prefix: Tensor  # (B, P, A), normalised actions still to execute, first one = now
    inference_delay: int
    execution_horizon: int

    def overlap(self, chunk_size: int) -> int:
        return min(self.prefix.shape[1], self.execution_horizon, chunk_size)

    def start(self, noise: Tensor) -> Tensor:
        return noise

    def velocity(self, x: Tensor, s: float, velocity: Velocity) -> Tensor:
        raise NotImplementedError


@dataclass
class GuidedInpainting(Inpainting):
    """The RTC paper's guidance, computed by LeRobot's RTCProcessor in pi0's convention."""

    processor: RTCProcessor | None = None

    def velocity(self, x: Tensor, s: float, velocity: Velocity) -> Tensor:
        def pi0_velocity(y: Tensor) -> Tensor:
            with torch.no_grad():  # LeRobot's correction does not differentiate through the model
                return -velocity(y)

        guided = self.processor.denoise_step(
            x_t=x,
            prev_chunk_left_over=self.prefix.to(x.device),
            inference_delay=self.inference_delay,
            time=1.0 - s,
            original_denoise_step_partial=pi0_velocity,
            execution_horizon=self.execution_horizon,
        )
        return -guided.detach()


@dataclass
class HardInpainting(Inpainting):
    """Start the overlap at the prefix; freeze the delayed steps, ramp the rest in (GR00T N1.7)."""

    ramp_rate: float = 6.0

    def strength(self, x: Tensor) -> Tensor:
        overlap = self.overlap(x.shape[1])
        frozen = max(0, min(self.inference_delay, overlap))
        strength = torch.ones(x.shape[1], device=x.device)
        strength[:frozen] = 0.0
        t = torch.linspace(0.0, 1.0, overlap - frozen + 2, device=x.device)
        ramp = 1 - torch.exp(-self.ramp_rate * t)
        strength[frozen:overlap] = (ramp / ramp[-1].clamp_min(1e-8))[1:-1]
        return strength[None, :, None]

    def start(self, noise: Tensor) -> Tensor:
        overlap = self.overlap(noise.shape[1])
        x = noise.clone()
        x[:, :overlap] = self.prefix[:, :overlap].to(noise)
        return x

    def velocity(self, x: Tensor, s: float, velocity: Velocity) -> Tensor:
        return velocity(x) * self.strength(x)


def make_inpainting(
    mode: str,
    prefix: Tensor,
    inference_delay: int,
    execution_horizon: int,
    processor: RTCProcessor | None,
    ramp_rate: float,
) -> Inpainting:
    if mode == "guided":
        if processor is None:
            raise RuntimeError(
                "rtc_mode='guided' needs LeRobot's RTCProcessor: call policy.init_rtc_processor() after setting "
                "policy.config.rtc_config (lerobot-rollout --inference.type=rtc does both)."
            )
        return GuidedInpainting(prefix, inference_delay, execution_horizon, processor=processor)
    if mode == "hard":
        return HardInpainting(prefix, inference_delay, execution_horizon, ramp_rate=ramp_rate)
    raise ValueError(f"rtc_mode={mode!r} is not one of {RTC_MODES}: set --policy.rtc_mode=guided or hard.")


def hold_chunk(prefix: Tensor, chunk_size: int) -> Tensor:
    """The prefix, then NaN rows: what the arm does when a new chunk is unusable.

    The safety guard turns each NaN row into the last command it sent (safety.py), so the arm finishes the
    prefix and then stops where it is, even where the rate limit kept it short of the prefix's last target.
    The next inference's prefix (:func:`prefix_batch`) leaves the NaN rows out.
    """
    prefix = prefix[:, :chunk_size]
    tail = prefix.new_full((prefix.shape[0], chunk_size - prefix.shape[1], prefix.shape[2]), float("nan"))
    return torch.cat([prefix, tail], dim=1)
