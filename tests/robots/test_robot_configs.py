"""robots/ configs parse with LeRobot's own parsers; teleoperated recording writes a LeRobotDataset."""

import pytest
from conftest import ARMS, FOLLOWER_PORT, LEADER_PORT, ROOT, parse_with_lerobot, virtualize
from lerobot.robots import RobotConfig
from lerobot.rollout import RolloutConfig
from lerobot.scripts.lerobot_record import RecordConfig
from lerobot.scripts.lerobot_teleoperate import TeleoperateConfig
from lerobot.teleoperators import TeleoperatorConfig

LEADERS = {"so100": "so100_leader", "so101": "so101_leader", "koch": "koch_leader"}


@pytest.mark.parametrize("arm", ARMS)
def test_teleoperate_and_record_configs_parse(arm):
    teleop = parse_with_lerobot(TeleoperateConfig, [f"--config_path={ROOT}/robots/{arm}/teleoperate.yaml"])
    record = parse_with_lerobot(RecordConfig, [f"--config_path={ROOT}/robots/{arm}/record.yaml"])
    for cfg in (teleop, record):
        # so100_* and so101_* share one config class in LeRobot 0.6, so compare classes, not .type.
        assert type(cfg.teleop) is TeleoperatorConfig.get_choice_class(LEADERS[arm])
        assert type(cfg.robot) is RobotConfig.get_choice_class(f"{arm}_follower")
        assert isinstance(cfg.robot.max_relative_target, float)  # LeRobot rejects an int here
        assert set(cfg.robot.cameras) == {"front", "wrist"}
        assert all(cam.fps == 30 for cam in cfg.robot.cameras.values())
    assert teleop.fps == 30 and record.dataset.fps == 30
    assert record.dataset.single_task and record.dataset.push_to_hub is False


@pytest.mark.parametrize("arm", ARMS)
def test_rollout_config_parses_with_a_roboalign_checkpoint(arm, tmp_path):
    from lerobot_roboalign import RoboAlignConfig

    RoboAlignConfig(device="cpu").save_pretrained(tmp_path)
    cfg = parse_with_lerobot(
        RolloutConfig,
        [f"--config_path={ROOT}/robots/{arm}/rollout.yaml", f"--policy.path={tmp_path}", "--robot.port=/dev/ttyUSB3"],
    )
    assert cfg.policy.type == "roboalign" and cfg.task and cfg.fps == 30
    assert cfg.robot.port == "/dev/ttyUSB3" and cfg.strategy.type == "base"


@pytest.mark.slow
@pytest.mark.parametrize("arm", ["so101", "koch"])
def test_teleoperated_recording_writes_a_dataset(arm, tmp_path, virtual_hw, monkeypatch):
    from lerobot.datasets import LeRobotDataset
    from lerobot.scripts.lerobot_record import record

    config = virtualize(ROOT / "robots" / arm / "record.yaml", tmp_path, {"front": (48, 64)})
    root = tmp_path / "dataset"
    follower = virtual_hw.VirtualArm.from_file(f"{arm}_follower", ROOT / "calibration" / f"{arm}_follower.json")
    leader = virtual_hw.VirtualArm.from_file(
        LEADERS[arm], ROOT / "calibration" / f"{LEADERS[arm]}.json", human_motion=True
    )
    argv = [f"--config_path={config}", f"--dataset.root={root}", "--dataset.num_episodes=1",
            "--dataset.episode_time_s=2", "--dataset.reset_time_s=0", "--dataset.repo_id=local/test_rec",
            "--dataset.no_stamp=true", "--dataset.video=false"]  # fmt: skip
    monkeypatch.setattr("sys.argv", ["lerobot-record", *argv])
    with virtual_hw.virtual_ports({FOLLOWER_PORT: follower, LEADER_PORT: leader}):
        record()

    dataset = LeRobotDataset("local/test_rec", root=root)
    assert dataset.num_episodes == 1 and dataset.num_frames >= 30  # ~2 s at 30 fps
    frame = dataset[0]
    assert frame["task"] == "Pick up the cube and place it in the bowl"
    assert tuple(frame["observation.images.front"].shape) == (3, 48, 64)
    actions = dataset.hf_dataset["action"]
    assert len({tuple(a.tolist()) for a in actions}) > 10  # the leader's hand motion was recorded
    assert len(follower.goal_log) >= 30 and virtual_hw.goal_ticks_within(follower)
    assert follower.torque_enabled() == dict.fromkeys(follower.torque_enabled(), 0)  # torque off after record
