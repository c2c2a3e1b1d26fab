"""Simulated SO-101 with a camera and instructions, registered with LeRobot as ``--env.type=so101_lang``.

Importing this package registers the env config. Headless machines have no display for
MuJoCo's default GLFW backend, so EGL is chosen unless the user picked one (this only
takes effect when nothing imported MuJoCo before us; the renderer says how to fix it otherwise).
"""

import os

if not os.environ.get("DISPLAY"):
    os.environ.setdefault("MUJOCO_GL", "egl")

from .configuration_so101_lang import SO101LangEnvConfig

__all__ = ["SO101LangEnvConfig"]
