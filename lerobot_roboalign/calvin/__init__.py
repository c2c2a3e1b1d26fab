"""CALVIN (ABC->D): the ``calvin`` env for LeRobot and the official long-horizon protocol.

Importing this package registers ``--env.type=calvin``; ``calvin_env`` itself is imported only
when an env is created, so the registration works without the simulator installed.
"""

from .env import CalvinEnv

__all__ = ["CalvinEnv"]
