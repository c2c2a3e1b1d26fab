"""``lerobot-rollout --inference.type=rtc`` (robots/*/rollout_rtc.yaml) driving virtual SO-100/SO-101/Koch arms.

LeRobot's RTC engine predicts chunks in a background thread and postprocesses whole chunks,
bypassing ``select_action`` and its blender; these tests check what reached the servos.
"""

import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import ROOT, virtualize
from test_rollout import MAX_DELTA, TICK, _cameras, _checkpoint_for, _max_step, _Recorder, _run_rollout

pytestmark = pytest.mark.slow
BOUNDARY_FACTOR = 2.0  # a chunk switch may move at most this times the largest step inside a chunk


class _Spy:
    """Records every action the robot was sent, every safety-step output, which chunks the safety step held at
    rest, when chunks were merged and how many actions of the previous chunk were still queued then (0: the
    queue ran dry, nothing to continue).

    The rollout is stopped (LeRobot's own shutdown event) as soon as ``until(spy)`` holds, so a test
    lasts as long as the machine needs for enough chunks, not a fixed, load-dependent duration.
    """

    def __init__(self, monkeypatch, until: Callable[["_Spy"], bool]) -> None:
        import lerobot.scripts.lerobot_rollout as rollout_script
        from lerobot.policies.rtc import ActionQueue
        from lerobot.rollout.robot_wrapper import ThreadSafeRobot

        from lerobot_roboalign.safety import CommandGuard, RoboAlignActionSafetyStep

        self.sent: list[dict[str, float]] = []
        self.safe_rows: list[torch.Tensor] = []
        self.held_chunks: list[bool] = []
        self.merged_at: list[int] = []
        self.queued_at_merge: list[int] = []
        self.calls = 0
        send, safe, merge = ThreadSafeRobot.send_action, RoboAlignActionSafetyStep.action, ActionQueue.merge
        command = CommandGuard.command
        build = rollout_script.build_rollout_context

        def spy_build(cfg, shutdown_event, *args, **kwargs):
            self.shutdown_event = shutdown_event
            return build(cfg, shutdown_event, *args, **kwargs)

        def spy_send(robot, action):
            self.sent.append(dict(action))
            if until(self):
                self.shutdown_event.set()
            return send(robot, action)

        def spy_safe(step, action):
            out = safe(step, action)
            if out.ndim == 3:
                self.held_chunks.append(bool((out == out[:, :1]).all()))
            return out

        def spy_command(guard, *args, **kwargs):  # the guard's output: what the engine's queue hands on
            out = command(guard, *args, **kwargs)
            if out is not None:
                self.safe_rows.extend(out.reshape(-1, out.shape[-1]).detach().cpu())
            return out

        def spy_merge(queue, *args, **kwargs):
            self.merged_at.append(len(self.sent))
            self.queued_at_merge.append(queue.qsize())
            return merge(queue, *args, **kwargs)

        monkeypatch.setattr(ThreadSafeRobot, "send_action", spy_send)
        monkeypatch.setattr(RoboAlignActionSafetyStep, "action", spy_safe)
        monkeypatch.setattr(CommandGuard, "command", spy_command)
        monkeypatch.setattr(ActionQueue, "merge", spy_merge)
        monkeypatch.setattr(rollout_script, "build_rollout_context", spy_build)

    def actions(self, names: list[str]) -> torch.Tensor:
        return torch.tensor([[a[f"{n}.pos"] for n in names] for a in self.sent])


def _rollout_rtc(arm: str, checkpoint: Path, tmp_path: Path, follower, virtual_hw, *extra: str, rtc: bool = True) -> None:
    name = "rollout_rtc.yaml" if rtc else "rollout.yaml"
    config = virtualize(ROOT / "robots" / arm / name, tmp_path, _cameras(checkpoint))
    # 5 fps: a chunk (16 steps) lasts 3.2 s, longer than one inference of the tiny model even on a busy
    # 2-core machine (up to 2 s measured under load 6); RTC needs inference faster than a chunk, or the
    # queue runs dry and the arm (safely) waits. The spy ends the rollout early; 600 s is a cap.
    argv = [f"--config_path={config}", f"--policy.path={checkpoint}", "--device=cpu", "--duration=600", "--fps=5",
            "--return_to_initial_position=false", *extra]  # fmt: skip
    _run_rollout(argv, follower, virtual_hw)


@pytest.mark.parametrize(
    ("arm", "extra"),
    [
        ("so100", ()),
        ("so101", ("--policy.rtc_mode=hard",)),
        ("koch", ()),
        # LeRobot's compile wrapper, warm-up and flush with dynamo tracing the whole policy; the eager
        # backend because inductor's C++ code generation takes minutes per graph on a 2-core CPU.
        ("so101", ("--use_torch_compile=true", "--torch_compile_backend=eager", "--compile_warmup_inferences=1")),
    ],
    ids=["so100-guided", "so101-hard", "koch-guided", "so101-compiled"],
)
def test_rtc_rollout_sends_only_safe_actions(arm, extra, roboalign_checkpoint, tmp_path, virtual_hw, monkeypatch):
    arm_type = f"{arm}_follower"
    checkpoint = _checkpoint_for(arm_type, roboalign_checkpoint, tmp_path)
    follower = virtual_hw.VirtualArm.from_file(arm_type, ROOT / "calibration" / f"{arm_type}.json")
    # compiled: dynamo re-traces for each new inference delay, minutes per chunk on a busy 2-core CPU
    least_sent, least_chunks = (5, 2) if "--use_torch_compile=true" in extra else (25, 3)
    spy = _Spy(monkeypatch, until=lambda spy: len(spy.sent) >= least_sent and len(spy.merged_at) >= least_chunks)
    _rollout_rtc(arm, checkpoint, tmp_path, follower, virtual_hw, *extra)

    names = list(virtual_hw.MOTOR_NAMES)
    sent = spy.actions(names)
    assert len(sent) >= least_sent and len(spy.merged_at) >= least_chunks, "RTC drove the arm over several chunks"
    assert torch.isfinite(sent).all()
    # every action sent went through the safety step's guard (as the engine's queue handed each row on)
    safe = torch.stack(spy.safe_rows)
    assert all(torch.isclose(safe, row, atol=1e-4).all(dim=-1).any() for row in sent)
    assert virtual_hw.goal_ticks_within(follower)
    if arm != "koch":  # degrees: MAX_DELTA degrees per step, +1 tick of rounding
        assert _max_step(follower.goal_log, names[:-1]) <= MAX_DELTA * TICK + 1
    assert follower.torque_enabled() == dict.fromkeys(virtual_hw.MOTOR_NAMES, 0)


@pytest.mark.parametrize("mode", ["guided", "hard"])
def test_slow_backbone_switches_chunks_without_a_jump(mode, roboalign_checkpoint, tmp_path, virtual_hw, monkeypatch):
    from lerobot_roboalign.modeling_roboalign import RoboAlignPolicy

    predict = RoboAlignPolicy.predict_action_chunk

    def slow(self, batch, **kwargs):
        time.sleep(0.8)  # 4 control periods at 5 fps: a large backbone
        return predict(self, batch, **kwargs)

    monkeypatch.setattr(RoboAlignPolicy, "predict_action_chunk", slow)
    bound = tmp_path / "pretrained_model"
    import shutil

    from lerobot_roboalign.calibration import main_check

    shutil.copytree(roboalign_checkpoint, bound)
    # no rate limit: the stream shows the policy's own continuity (limits still clamp)
    main_check([str(ROOT / "calibration/so101_follower.json"), "--robot.type=so101_follower",
                f"--checkpoint={bound}", "--max_delta=1000"])  # fmt: skip
    follower = virtual_hw.VirtualArm.from_file("so101_follower", ROOT / "calibration" / "so101_follower.json")
    spy = _Spy(monkeypatch, until=lambda spy: len(spy.sent) >= 30 and len(_continued_switches(spy)) >= 4)
    _rollout_rtc("so101", bound, tmp_path, follower, virtual_hw, f"--policy.rtc_mode={mode}")

    steps = spy.actions(list(virtual_hw.MOTOR_NAMES)).diff(dim=0).abs().amax(dim=-1)  # step k: sent[k] - sent[k-1]
    boundaries = _continued_switches(spy)
    inside = [s for k, s in enumerate(steps.tolist()) if k not in {k - 1 for k in spy.merged_at}]
    assert len(boundaries) >= 3, f"too few chunk switches with the previous chunk still queued: {spy.merged_at=}, " \
        f"{spy.queued_at_merge=} (inference slower than a chunk on this machine)"  # fmt: skip
    worst = max(steps[k].item() for k in boundaries)
    assert worst <= BOUNDARY_FACTOR * max(inside), (worst, max(inside))


def _continued_switches(spy: _Spy) -> list[int]:
    """Steps at which a chunk took over from one still being executed, which RTC is to continue smoothly.

    A chunk the safety step held at rest (the engine's first; the second too when it was requested before the
    arm took an action of the first, as LeRobot's back-to-back queue threshold allows) is followed by the move
    from the rest pose into the policy's range, which max_delta=1000 does not limit. A chunk merged into an
    empty queue (inference outlasted the previous chunk: a loaded machine) has no executed prefix to continue.
    """
    merges = zip(spy.merged_at[1:], spy.queued_at_merge[1:], spy.held_chunks)  # the chunk before each merge held?
    continued = {k - 1 for k, queued, after_hold in merges if queued > 0 and not after_hold}
    return sorted(k for k in continued if 1 <= k < len(spy.sent) - 1)


NAN_FROM, NAN_UNTIL = 3, 23  # control steps with NaN camera frames: longer than a chunk
CHUNK_SIZE = 16  # the test checkpoints' chunk


@pytest.mark.parametrize("inference", ["rtc", "sync"])
def test_nan_frames_mid_rollout_hold_the_arm(inference, roboalign_checkpoint, tmp_path, virtual_hw, monkeypatch):
    from lerobot_roboalign.modeling_roboalign import RoboAlignPolicy

    predict, calls = RoboAlignPolicy.predict_action_chunk, []

    def nan_frames(self, batch, **kwargs):
        calls.append(len(spy.sent))
        if NAN_FROM <= len(spy.sent) < NAN_UNTIL:  # a camera delivering NaN frames for a while (in control steps,
            # not inference calls: RTC predicts as often as the machine allows)
            batch = {k: v.clone().fill_(float("nan")) if k.startswith("observation.images") else v
                     for k, v in batch.items()}  # fmt: skip
        return predict(self, batch, **kwargs)

    monkeypatch.setattr(RoboAlignPolicy, "predict_action_chunk", nan_frames)
    checkpoint = _checkpoint_for("so101_follower", roboalign_checkpoint, tmp_path)
    follower = virtual_hw.VirtualArm.from_file("so101_follower", ROOT / "calibration" / "so101_follower.json")
    spy = _Spy(monkeypatch, until=lambda spy: len(spy.sent) >= NAN_UNTIL + 8 and calls[-1] >= NAN_UNTIL)
    warnings = _Recorder()
    logging.getLogger("lerobot_roboalign").addHandler(warnings)
    try:
        _rollout_rtc("so101", checkpoint, tmp_path, follower, virtual_hw, "--policy.chunk_blend_steps=0",
                     "--policy.n_action_steps=4", rtc=inference == "rtc")  # fmt: skip
    finally:
        logging.getLogger("lerobot_roboalign").removeHandler(warnings)

    assert calls[-1] >= NAN_UNTIL and any("non-finite" in m for m in warnings.messages)
    assert virtual_hw.goal_ticks_within(follower)
    held = [a == b for a, b in zip(follower.goal_log, follower.goal_log[1:])]
    # once the last valid chunk has run out (at most a chunk after the NaN frames began), the target stays put
    # while the frames are NaN; under RTC a held chunk must not be re-aligned one row early (it alternated)
    moves = [max(abs(a[n] - b[n]) for n in a) for a, b in zip(follower.goal_log, follower.goal_log[1:])]
    assert all(held[NAN_FROM + CHUNK_SIZE : NAN_UNTIL - 1]), (moves[:NAN_UNTIL], spy.merged_at, calls)
    assert not all(held[NAN_UNTIL:]), "and moved again once the frames were valid"
