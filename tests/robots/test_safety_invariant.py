"""Issue 24: the invariant as a property of everything that can happen between pre- and post-processing.

The real processor steps, a policy's :class:`SafetyContext` and LeRobot's real RTC ``ActionQueue`` are
driven by a seeded adversary: sync ticks (the blender holding, NaN and far actions), RTC inferences whose
control loop keeps reading the queue while they run (more reads than the chunk holds: a latency spike),
engine resets (``policy.reset()`` + ``postprocessor.reset()`` + queue cleared, or ``policy.reset()`` alone
as in ``lerobot-eval``) that land between the preprocessor and the policy or the postprocessor, with the arm
moved meanwhile. The arm follows each command. Checked for every command: finite, inside the limits, within
max_delta of the previous command the arm got (or of where it was moved), and never one before a joint
measurement taken after the last reset.

``test_removing_any_clamp_breaks_the_invariant`` is the mutation check (issue 24): each clamp is removed in
turn through its seam and the property must then fail.
"""

from __future__ import annotations

import random

import pytest
import torch
from lerobot.policies.rtc import ActionQueue, RTCConfig
from lerobot.processor import TransitionKey
from lerobot.utils.constants import OBS_STATE

from lerobot_roboalign.safety import (
    CommandGuard,
    RoboAlignActionSafetyStep,
    RoboAlignMeasuredStateStep,
    SafetyContext,
)

LOW, HIGH, MAX_DELTA = [-90.0, 0.0, -100.0], [90.0, 100.0, 100.0], [4.0, 2.0, 6.0]
CHUNK, EVENTS = 8, 80
SEEDS = range(40)


class Violation(AssertionError):
    pass


class World:
    """One arm, its policy's context, its pre/post-processor safety steps and an RTC engine's queue."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.tap = RoboAlignMeasuredStateStep()
        self.step = RoboAlignActionSafetyStep(max_delta=MAX_DELTA, joint_min=LOW, joint_max=HIGH)
        self.policy = SafetyContext()
        self.queue = ActionQueue(RTCConfig(enabled=True, execution_horizon=CHUNK))
        self.pose = self.random_pose()
        self.previous = self.pose.clone()  # the last command the arm got, or where it was moved
        self.measured_since_reset = False
        self.direction = 1.0
        self.commands = 0

    # ---- the world ------------------------------------------------------------------------------
    def random_pose(self) -> torch.Tensor:
        return torch.tensor([lo + (hi - lo) * self.rng.uniform(0.1, 0.9) for lo, hi in zip(LOW, HIGH)])

    def target(self) -> list[float]:
        """Far, mostly one way for a while (to reach the limits), reversing, sometimes not finite."""
        if self.rng.random() < 0.1:
            self.direction = -self.direction
        if self.rng.random() < 0.08:
            return [float("nan"), 0.0, float("inf")]
        return [self.direction * self.rng.uniform(0.0, 400.0) for _ in LOW]

    def observe(self) -> None:
        self.tap({TransitionKey.OBSERVATION: {OBS_STATE: self.pose[None].clone()}})
        self.measured_since_reset = True

    def send(self, command: torch.Tensor) -> None:
        command = command.reshape(-1).double()
        if not torch.isfinite(command).all():
            raise Violation(f"non-finite command {command}")
        if ((command < torch.tensor(LOW) - 1e-6) | (command > torch.tensor(HIGH) + 1e-6)).any():
            raise Violation(f"command {command} outside the limits")
        if ((command - self.previous.double()).abs() > torch.tensor(MAX_DELTA) + 1e-6).any():
            raise Violation(f"command {command} more than max_delta from the previous {self.previous}")
        if not self.measured_since_reset:
            raise Violation("a command with no joint measurement since the reset")
        self.pose = self.previous = command.float()
        self.commands += 1

    def reset(self) -> None:
        """An engine reset from the control loop (or lerobot-eval's policy.reset() alone); the arm may move."""
        self.policy.new_episode()
        if self.rng.random() < 0.8:
            self.step.reset()
            self.queue.clear()
        if self.rng.random() < 0.7:
            self.pose = self.previous = self.random_pose()
        self.measured_since_reset = False

    def read(self) -> None:
        row = self.queue.get()
        if row is not None:
            self.send(row)

    # ---- the entry points -------------------------------------------------------------------------
    def sync_tick(self) -> None:
        self.observe()
        if self.rng.random() < 0.05:
            self.reset()
        self.policy.enter()
        self.policy.hold = self.rng.random() < 0.1  # select_action's blender holds (a dropped chunk)
        try:
            command = self.step.action(torch.tensor([self.target()]))
        except RuntimeError:  # refused: nothing reaches the arm
            return
        self.send(command)

    def rtc_inference(self) -> None:
        """Observe, infer while the control loop reads on (a reset may land anywhere), postprocess, merge."""
        self.observe()
        entered = self.rng.random() < 0.5
        if entered:
            self.policy.enter()
        index_before = self.queue.get_action_index()
        in_flight = self.rng.choice([0, 1, 2, 3, CHUNK + 3])  # the last: a spike longer than a chunk
        reset_at = self.rng.randrange(in_flight + 1) if self.rng.random() < 0.25 else -1
        for k in range(in_flight):
            if k == reset_at:
                self.reset()
            self.read()
        if not entered:
            self.policy.enter()
        chunk = torch.tensor([[self.target() for _ in range(CHUNK)]])
        processed = self.step.action(chunk).squeeze(0)
        self.queue.merge(chunk.squeeze(0), processed, in_flight, index_before)

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
        world.run()
        commands += world.commands
    return commands


def test_every_command_keeps_the_invariant():
    assert run_worlds() > 40 * 30  # most events send something


def _identity_clamp(self, safe, *args):
    return safe


MUTANTS = {
    "fresh measurement (taken after the last reset)": (CommandGuard, "_is_fresh", lambda self, m, limits: True),
    "hold without a fresh measurement": (
        CommandGuard, "_hold", lambda self, like, measured: self._sent(like.nan_to_num(0.0), like),
    ),
    "finite": (CommandGuard, "_replace_non_finite", _identity_clamp),
    "joint limits": (CommandGuard, "_clamp_to_limits", _identity_clamp),
    "max_delta from the previous command": (CommandGuard, "_clamp_to_previous", _identity_clamp),
    "max_delta from the measured joints": (CommandGuard, "_clamp_to_measured", _identity_clamp),
    "RTC rows guarded when the engine sends them": (RoboAlignActionSafetyStep, "_guard_rows", lambda self, c, _: c),
}  # fmt: skip


@pytest.mark.parametrize("clamp", list(MUTANTS))
def test_removing_any_clamp_breaks_the_invariant(clamp, monkeypatch):
    """Mutation check. Clamps (seam removed in turn; the property above must then fail):

    * fresh measurement: ``CommandGuard._is_fresh`` (a measurement from before a reset or too old is none)
    * hold without a fresh measurement: ``CommandGuard._hold`` (mutant: passes the action on instead)
    * finite: ``CommandGuard._replace_non_finite``
    * joint limits: ``CommandGuard._clamp_to_limits``
    * max_delta from the previous command: ``CommandGuard._clamp_to_previous``
    * max_delta from the measured joints: ``CommandGuard._clamp_to_measured``
    * RTC rows guarded when sent: ``RoboAlignActionSafetyStep._guard_rows`` (mutant: the chunk as computed)
    * async client guard: ``RoboAlignRobotClient._action_tensor_to_action_dict``, in test_safety_stress.py
      (``test_async_client_without_its_guard_breaks_the_invariant``: it needs LeRobot's client and server)
    """
    owner, name, mutant = MUTANTS[clamp]
    monkeypatch.setattr(owner, name, mutant)
    with pytest.raises(Violation):
        run_worlds()
