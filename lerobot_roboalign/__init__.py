"""RoboAlign for LeRobot.

Importing the package registers the ``roboalign`` policy config with LeRobot (draccus
choice registry) and the processor steps its checkpoints reference.
"""

from .configuration_roboalign import RoboAlignConfig

__all__ = ["RoboAlignConfig"]
