"""CALVIN (ABC->D): the ``calvin`` env for LeRobot and the official long-horizon protocol.

Importing ``lerobot_roboalign.calvin.env`` registers ``--env.type=calvin`` (LeRobot's plugin discovery does, through
``lerobot_roboalign.register``); ``calvin_env`` itself is imported only when an env is created, so the registration
works without the simulator installed. This package imports neither, so ``roboalign calvin eval --help`` is fast.
"""

import importlib


def __getattr__(name: str):
    if name == "CalvinEnv":
        return importlib.import_module(".env", __name__).CalvinEnv
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["CalvinEnv"]
