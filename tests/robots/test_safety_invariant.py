"""Issue 24, 29: the invariant as a property of everything that can happen between pre- and post-processing.

The real processor steps, a policy's :class:`SafetyContext` and LeRobot's real RTC ``ActionQueue`` are
driven by a seeded adversary on an injected clock: sync ticks (the blender holding, NaN and far actions, slow
inferences), RTC inferences whose control loop keeps reading the queue while they run (more reads than the chunk
holds: a latency spike; each read after the tick's observation, as rtc.RoboAlignRTCEngine hands it over, and the
inference built from an observation stamped when the control loop notified it), engine resets
(``policy.reset()`` + ``postprocessor.reset()`` + queue cleared, or ``policy.reset()`` alone as in
``lerobot-eval``) that land between the notify, the preprocessor, the policy and the postprocessor, with the arm
moved meanwhile (sometimes outside the limits), an arm that sometimes does not follow (stalled), and inferences
that take longer than the measurement-age limit. Checked for every command: finite; within max_delta of the
previous command the arm got (or of where it was moved) and of the joints measured last; inside the limits, or on
a joint measured outside them no farther out than the arm; a hold (the previous command) when it comes from a chunk
whose observation was captured before the last reset or whose inference took longer than the age limit, or when
the latest measurement is older than that limit; and never one before a joint measurement taken after the last
reset.

``test_removing_any_clamp_breaks_the_invariant`` is the mutation check (issues 24, 29): each clamp is removed or
weakened in turn through its seam and the property must then fail.
"""

from __future__ import annotations

import random

import pytest
import torch
from lerobot.policies.rtc import ActionQueue, RTCConfig
from lerobot.processor import TransitionKey
from lerobot.utils.constants import OBS_STATE

from lerobot_roboalign import safety
from lerobot_roboalign.safety import (
    CommandGuard,
    RoboAlignActionSafetyStep,
    RoboAlignMeasuredStateStep,
    SafetyContext,
    StampedObservation,
    capture,
)

LOW, HIGH, MAX_DELTA = [-90.0, 0.0, -100.0], [90.0, 100.0, 100.0], [4.0, 2.0, 6.0]
CHUNK, EVENTS = 8, 80
SEEDS = range(40)
PERIOD, MAX_AGE = 1 / 30, 1.0  # control period and measurement-age limit (s) on the injected clock


class Violation(AssertionError):
    pass


class World:
    """One arm, its policy's context, its pre/post-processor safety steps and an RTC engine's queue."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.now = 0.0
        self.tap = RoboAlignMeasuredStateStep()
        self.step = RoboAlignActionSafetyStep(max_delta=MAX_DELTA, joint_min=LOW, joint_max=HIGH,
                                              max_measurement_age_s=MAX_AGE)  # fmt: skip
        self.policy = SafetyContext()
        self.queue = ActionQueue(RTCConfig(enabled=True, execution_horizon=CHUNK))
        self.pose = self.random_pose()
        self.previous = self.pose.clone()  # the last command the arm got since the reset, or where the arm is
        self.measured: torch.Tensor | None = None  # joints of the latest measurement since the reset
        self.measured_at = 0.0
        self.epoch = 0  # resets so far
        self.queue_epoch = 0  # the epoch of the observation the queued rows were computed from
        self.queue_slow = False  # their inference took longer than MAX_AGE
        self.chunk: tuple[int, bool] | None = None  # the policy's chunk: (epoch of its observation, slow)
        self.direction = 1.0
        self.commands = 0

    # ---- the world ------------------------------------------------------------------------------
    def random_pose(self) -> torch.Tensor:
        pose = torch.tensor([lo + (hi - lo) * self.rng.uniform(0.1, 0.9) for lo, hi in zip(LOW, HIGH)])
        if self.rng.random() < 0.15:  # put down outside the limits (a reset move, a human)
            joint = self.rng.randrange(len(LOW))
            pose[joint] = self.rng.choice([LOW[joint] - self.rng.uniform(1, 30), HIGH[joint] + self.rng.uniform(1, 30)])
        return pose

    def target(self) -> list[float]:
        """Far, mostly one way for a while (to reach the limits), reversing, sometimes not finite."""
        if self.rng.random() < 0.1:
            self.direction = -self.direction
        if self.rng.random() < 0.08:
            return [float("nan"), 0.0, float("inf")]
        return [self.direction * self.rng.uniform(0.0, 400.0) for _ in LOW]

    def tick(self) -> None:
        self.now += PERIOD

    def infer(self) -> bool:
        """An inference's latency on the clock; True: longer than the age limit."""
        slow = self.rng.random() < 0.1
        self.now += MAX_AGE * self.rng.uniform(1.2, 1.8) if slow else PERIOD * self.rng.uniform(0.1, 0.9)
        return slow

    def observe(self) -> None:
        """The sync engine: robot read and preprocessing in one go."""
        self.tap({TransitionKey.OBSERVATION: {OBS_STATE: self.pose[None].clone()}})
        self.measured, self.measured_at = self.pose.clone(), self.now

    def notify(self) -> StampedObservation:
        """The RTC control loop's robot read, handed to the guard and stamped for the inference thread."""
        measurement = capture(self.pose[None].clone())
        self.step.observe_tick(measurement)
        self.measured, self.measured_at = self.pose.clone(), self.now
        return StampedObservation({OBS_STATE: self.pose[None].clone()}, measurement)

    def send(self, command: torch.Tensor, must_hold: bool = False) -> None:
        command = command.reshape(-1).double()
        if not torch.isfinite(command).all():
            raise Violation(f"non-finite command {command}")
        if self.measured is None:
            raise Violation("a command with no joint measurement since the reset")
        if ((command - self.previous.double()).abs() > torch.tensor(MAX_DELTA) + 1e-6).any():
            raise Violation(f"command {command} more than max_delta from the previous {self.previous}")
        if ((command - self.measured.double()).abs() > torch.tensor(MAX_DELTA) + 1e-6).any():
            raise Violation(f"command {command} more than max_delta from the measured {self.measured}")
        low, high, pose = torch.tensor(LOW).double(), torch.tensor(HIGH).double(), self.pose.double()
        out = (low - command).clamp_min(0) + (command - high).clamp_min(0)
        arm_out = (low - pose).clamp_min(0) + (pose - high).clamp_min(0)
        if (out > arm_out + 1e-6).any():
            raise Violation(f"command {command} outside the limits, farther than the arm at {pose}")
        stale = must_hold or self.now - self.measured_at > MAX_AGE
        held = torch.equal(command.float(), self.previous.float()) or torch.equal(command.float(), self.pose)
        if stale and not held:
            raise Violation(f"command {command} moved the arm from {self.previous} on a stale chunk or measurement")
        self.previous = command.float()
        if self.rng.random() < 0.85:  # else the arm is stalled: it does not follow
            self.pose = command.float()
        self.commands += 1

    def reset(self) -> None:
        """An engine reset from the control loop (or lerobot-eval's policy.reset() alone); the arm may move."""
        self.policy.new_episode()
        if self.rng.random() < 0.8:
            self.step.reset()
            self.queue.clear()
        if self.rng.random() < 0.7:
            self.pose = self.random_pose()
        self.previous = self.pose.clone()  # a reset restarts the previous-command rule from where the arm is
        self.measured, self.chunk = None, None
        self.epoch += 1

    def read(self) -> None:
        """One RTC control tick: read the arm (notify), then the queue."""
        self.tick()
        self.notify()
        row = self.queue.get()
        if row is not None:
            self.send(row, must_hold=self.queue_epoch < self.epoch or self.queue_slow)

    # ---- the entry points -------------------------------------------------------------------------
    def sync_tick(self) -> None:
        self.tick()
        self.observe()
        epoch = self.epoch
        if self.rng.random() < 0.05:
            self.reset()
        self.policy.enter()
        if self.rng.random() < 0.3:  # select_action computes a new chunk from this observation
            self.policy.enter(chunk=True)
            self.chunk = (epoch, self.infer())
        self.policy.hold = self.rng.random() < 0.1  # select_action's blender holds (a dropped chunk)
        try:
            command = self.step.action(torch.tensor([self.target()]))
        except RuntimeError:  # refused: nothing reaches the arm
            return
        self.send(command, must_hold=self.chunk is not None and (self.chunk[0] < self.epoch or self.chunk[1]))

    def rtc_inference(self) -> None:
        """Notify, infer while the control loop reads on (a reset may land anywhere), postprocess, merge."""
        observation, epoch = self.notify(), self.epoch
        index_before = self.queue.get_action_index()
        in_flight = self.rng.choice([0, 1, 2, 3, CHUNK + 3])  # the last: a spike longer than a chunk
        reset_at = self.rng.randrange(in_flight + 2) if self.rng.random() < 0.3 else -1
        read_at = self.rng.randrange(in_flight + 1)  # when the inference thread reads the held observation
        state = None
        for k in range(in_flight + 1):
            if k == reset_at:
                self.reset()
            if k == read_at:
                state = observation[OBS_STATE]  # the engine builds its batch from the held observation ...
                self.tap({TransitionKey.OBSERVATION: {OBS_STATE: state}})  # ... and preprocesses it
            if k < in_flight:
                self.read()
        if reset_at == in_flight + 1:
            self.reset()
        self.policy.enter(chunk=True)
        slow = self.infer()
        chunk = torch.tensor([[self.target() for _ in range(CHUNK)]])
        processed = self.step.action(chunk).squeeze(0)
        self.queue.merge(chunk.squeeze(0), processed, in_flight, index_before)
        self.queue_epoch, self.queue_slow = epoch, slow
        self.chunk = (epoch, slow)

    def run(self, events: int = EVENTS) -> None:
        for _ in range(events):
            kind = self.rng.random()
            if kind < 0.3:
                self.sync_tick()
            elif kind < 0.6:
                self.rtc_inference()
            elif kind < 0.92:
                for _ in range(self.rng.randint(1, 4)):
                    self.read()
            else:
                self.reset()


def run_worlds(seeds=SEEDS) -> int:
    commands = 0
    for seed in seeds:
        world = World(seed)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(safety, "clock", lambda: world.now)
            world.run()
        commands += world.commands
    return commands


def test_every_command_keeps_the_invariant():
    assert run_worlds() > 40 * 30  # most events send something


def _identity_clamp(self, safe, *args):
    return safe


def _limits_after_the_rate_limits(self, safe, measured, reach):
    limits = safety.Limits(None, torch.tensor(LOW), torch.tensor(HIGH))
    return _REAL_CLAMP_TO_LIMITS(self, _REAL_CLAMP_TO_MEASURED(self, safe, measured, reach), limits)


_REAL_CLAMP_TO_MEASURED, _REAL_CLAMP_TO_LIMITS = CommandGuard._clamp_to_measured, CommandGuard._clamp_to_limits

MUTANTS = {
    "fresh measurement (taken after the last reset)": (CommandGuard, "_is_fresh", lambda self, m, limits: True),
    "hold without a fresh measurement": (
        CommandGuard, "_hold", lambda self, like, measured, reach: self._sent(like.nan_to_num(0.0), like),
    ),
    "finite": (CommandGuard, "_replace_non_finite", _identity_clamp),
    "joint limits": (CommandGuard, "_clamp_to_limits", _identity_clamp),
    "max_delta from the previous command": (CommandGuard, "_clamp_to_previous", _identity_clamp),
    "max_delta from the measured joints": (CommandGuard, "_clamp_to_measured", _identity_clamp),
    "RTC rows guarded when the engine sends them": (RoboAlignActionSafetyStep, "_guard_rows", lambda self, c, _: c),
    # issue 29
    "measurement-age window doubled": (safety, "within_age", lambda age, limit: age <= 2 * limit),
    "limits clamped after the rate limits": (CommandGuard, "_clamp_to_measured", _limits_after_the_rate_limits),
    "freshness by preprocessing time (not the capture)": (safety, "measure", safety.capture),
    "RTC rows checked against each tick's measurement": (RoboAlignActionSafetyStep, "observe_tick", lambda *_: None),
    "a stale chunk holds": (RoboAlignActionSafetyStep, "_stale", lambda self, chunk: False),
}  # fmt: skip


@pytest.mark.parametrize("clamp", list(MUTANTS))
def test_removing_any_clamp_breaks_the_invariant(clamp, monkeypatch):
    """Mutation check. Clamps (seam removed or weakened in turn; the property above must then fail):

    * fresh measurement: ``CommandGuard._is_fresh`` (a measurement from before a reset or too old is none)
    * hold without a fresh measurement: ``CommandGuard._hold`` (mutant: passes the action on instead)
    * finite: ``CommandGuard._replace_non_finite``
    * joint limits: ``CommandGuard._clamp_to_limits``
    * max_delta from the previous command: ``CommandGuard._clamp_to_previous``
    * max_delta from the measured joints: ``CommandGuard._clamp_to_measured``
    * RTC rows guarded when sent: ``RoboAlignActionSafetyStep._guard_rows`` (mutant: the chunk as computed)
    * measurement-age window doubled: ``safety.within_age`` (mutant: twice the limit)
    * limits clamped after the rate limits (mutant: an arm outside the limits is pulled into them at once)
    * freshness by preprocessing time: ``safety.measure`` (mutant: ignores the capture stamp of the observation)
    * each RTC row against the tick's measurement: ``RoboAlignActionSafetyStep.observe_tick`` (mutant: ignored)
    * a chunk from before the reset or too slow holds: ``RoboAlignActionSafetyStep._stale`` (mutant: never)
    * async client guard: ``RoboAlignRobotClient._action_tensor_to_action_dict``, in test_safety_stress.py
      (``test_async_client_without_its_guard_breaks_the_invariant``: it needs LeRobot's client and server)
    """
    owner, name, mutant = MUTANTS[clamp]
    monkeypatch.setattr(owner, name, mutant)
    with pytest.raises(Violation):
        run_worlds()
