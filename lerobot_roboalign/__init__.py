"""RoboAlign for LeRobot.

Importing the package is cheap on purpose: ``roboalign --help`` imports it before anything else.
:func:`register` adds the ``roboalign`` policy config, this package's envs and its processor steps to
LeRobot's registries; LeRobot's plugin discovery calls it through ``lerobot_policy_roboalign``.
"""

import importlib

# Imported for their registration side effects: --policy.type=roboalign, --env.type=so101_lang|calvin,
# and the processor steps a saved checkpoint names.
REGISTERING_MODULES = (
    ".configuration_roboalign", ".calvin.env", ".envs.configuration_so101_lang", ".safety", ".processor_roboalign"
)


def register() -> None:
    """Register the policy config, envs and processor steps with LeRobot (idempotent)."""
    for module in REGISTERING_MODULES:
        importlib.import_module(module, __name__)


def __getattr__(name: str):
    if name == "RoboAlignConfig":
        register()
        return importlib.import_module(".configuration_roboalign", __name__).RoboAlignConfig
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["RoboAlignConfig", "register"]
