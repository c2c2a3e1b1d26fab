"""Fixtures for real-arm tests: LeRobot's robots over a virtual serial bus, configs from robots/."""

import shutil
import sys
from pathlib import Path

import pytest
import yaml
from lerobot.configs import parser

ROOT = Path(__file__).resolve().parents[2]
ARMS = {"so100": "so100", "so101": "so101", "koch": "koch"}
FOLLOWER_PORT, LEADER_PORT = "/dev/virtual-follower", "/dev/virtual-leader"


def parse_with_lerobot(config_class, argv: list[str]):
    """Parse argv exactly as a LeRobot command (``parser.wrap``) would, and return the config."""
    parsed = {}

    @parser.wrap()
    def command(cfg: config_class):  # noqa: ANN001
        parsed["cfg"] = cfg

    saved = sys.argv
    sys.argv = ["lerobot", *argv]
    try:
        command()
    finally:
        sys.argv = saved
    return parsed["cfg"]


def virtualize(config_file: Path, out_dir: Path, camera_names: dict[str, tuple[int, int]]) -> Path:
    """A copy of a robots/ config with virtual ports, synthetic cameras and calibration under ``out_dir``."""
    config = yaml.safe_load(config_file.read_text())
    cameras = {
        name: {"type": "roboalign_synthetic", "width": w, "height": h, "fps": 30}
        for name, (h, w) in camera_names.items()
    }
    for section, port in (("robot", FOLLOWER_PORT), ("teleop", LEADER_PORT)):
        if section not in config:
            continue
        device = config[section]
        device["port"] = port
        device["calibration_dir"] = str(out_dir / "calibration" / section)
        Path(device["calibration_dir"]).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / "calibration" / f"{device['type']}.json", Path(device["calibration_dir"]) / f"{device['id']}.json")
    config["robot"]["cameras"] = cameras
    path = out_dir / config_file.name
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def virtual_hw():
    import roboalign_virtual_hw

    return roboalign_virtual_hw


@pytest.fixture(autouse=True)
def _fresh_safety_thread_state():
    """Each test starts as a new process would: no measurement left in this thread by another test's steps."""
    from lerobot_roboalign import safety

    safety._LOCAL.__dict__.clear()
    yield
