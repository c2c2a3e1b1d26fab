"""RoboAlign for LeRobot.

Importing the package registers the ``roboalign`` policy config and this package's envs
with LeRobot's draccus choice registries.
"""

from . import (
    calvin,  # noqa: F401  (registers --env.type=calvin)
    envs,  # noqa: F401  (registers --env.type=so101_lang)
    safety,  # noqa: F401  (registers the safety processor step saved in checkpoints)
)
from .configuration_roboalign import RoboAlignConfig

__all__ = ["RoboAlignConfig"]
