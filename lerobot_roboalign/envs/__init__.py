"""Simulated SO-101 with a camera and instructions, registered with LeRobot as ``--env.type=so101_lang``.

Importing ``configuration_so101_lang`` registers the env config (``lerobot_roboalign.register`` does); the
package itself stays light, so its stdlib-only modules (``variation``) import without LeRobot. Headless
machines have no display for MuJoCo's default GLFW backend, so EGL is chosen unless the user picked one (this
only takes effect when nothing imported MuJoCo before us; the renderer says how to fix it otherwise).
"""

import os

if not os.environ.get("DISPLAY"):
    os.environ.setdefault("MUJOCO_GL", "egl")


def __getattr__(name: str):
    """SO101LangEnvConfig (and so its registration) on first use."""
    if name == "SO101LangEnvConfig":
        from .configuration_so101_lang import SO101LangEnvConfig

        return SO101LangEnvConfig
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["SO101LangEnvConfig"]
