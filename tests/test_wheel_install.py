"""A built wheel installs and works without the clone: plugin discovery, shipped files, `roboalign calibration check`.

The fresh venv reuses this venv's dependencies through a .pth line (nothing is downloaded); only the wheel is
installed into it, with --no-deps. Everything runs outside the repository, so nothing is imported from the clone.
"""

import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
DISCOVER = """
from lerobot.configs import PreTrainedConfig
from lerobot.envs.configs import EnvConfig
from lerobot.utils.import_utils import register_third_party_plugins
register_third_party_plugins()  # what every lerobot-* command does first
import lerobot_roboalign
print(lerobot_roboalign.__file__)
print("roboalign" in PreTrainedConfig.get_known_choices(), {"so101_lang", "calvin"} <= set(EnvConfig.get_known_choices()))
"""


def _run(*command: str | Path, cwd: Path) -> str:
    result = subprocess.run(
        [str(c) for c in command], capture_output=True, text=True, cwd=cwd, timeout=600, check=False
    )
    assert result.returncode == 0, f"{command}: {result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory) -> Path:
    """A fresh venv with the wheel built from a copy of this working tree installed in it; returns its bin/."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".venv", ".git", "outputs", "build", "logs", "*.egg-info", "__pycache__", ".pytest_cache", "_shipped"))  # fmt: skip
    _run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-w",
        tmp / "dist",
        source,
        cwd=tmp,
    )
    wheel = next((tmp / "dist").glob("lerobot_policy_roboalign-*.whl"))
    venv.create(tmp / "venv", with_pip=True)
    site = next((tmp / "venv" / "lib").glob("python3*/site-packages"))
    (site / "deps.pth").write_text(str(Path(sys.prefix) / "lib" / site.parent.name / "site-packages") + "\n")
    _run(tmp / "venv" / "bin" / "python", "-m", "pip", "install", "--no-deps", "--no-index", wheel, cwd=tmp)
    return tmp / "venv" / "bin"


def test_the_installed_wheel_registers_with_lerobot_plugin_discovery(wheel_venv, tmp_path):
    module, registered = _run(wheel_venv / "python", "-c", DISCOVER, cwd=tmp_path).splitlines()[-2:]
    assert Path(module).is_relative_to(wheel_venv.parent), f"imported {module}, not the installed wheel"
    assert registered == "True True"


def test_the_installed_wheel_exports_its_files_and_checks_a_shipped_calibration(wheel_venv, tmp_path):
    _run(wheel_venv / "roboalign", "files", "export", "out", cwd=tmp_path)
    for name in ("so101", "so100", "koch"):
        for config in ("teleoperate", "record", "rollout", "rollout_rtc"):
            assert (tmp_path / "out" / "robots" / name / f"{config}.yaml").is_file()
    shipped = tmp_path / "out" / "calibration" / "so101_follower.json"
    assert shipped.read_bytes() == (ROOT / "calibration" / "so101_follower.json").read_bytes()
    out = _run(
        wheel_venv / "roboalign", "calibration", "check", shipped, "--robot.type=so101_follower", cwd=tmp_path
    )
    assert "OK:" in out and "valid so101_follower calibration (6 motors)" in out
