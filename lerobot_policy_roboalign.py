"""Entry point for LeRobot's plugin discovery.

LeRobot imports a module named exactly like every installed ``lerobot_policy_*``
distribution; importing it registers the ``roboalign`` policy (and this package's envs).
"""

import sys

import lerobot_roboalign  # noqa: F401
from lerobot_roboalign.configuration_roboalign import check_cli_prompt_template

check_cli_prompt_template(sys.argv[1:])  # LeRobot's CLIs import plugins before they parse the command line
