"""Entry point for LeRobot's plugin discovery.

LeRobot imports a module named exactly like every installed ``lerobot_policy_*``
distribution; importing it registers the ``roboalign`` policy, this package's envs and its
processor steps (``lerobot_roboalign`` itself stays cheap to import, for ``roboalign --help``).
"""

import sys

import lerobot_roboalign
from lerobot_roboalign.configuration_roboalign import check_cli_prompt_template
from lerobot_roboalign.dataset_mapping import check_cli_offline_dataset

lerobot_roboalign.register()
# LeRobot's CLIs import plugins before they parse the command line: refuse what their parser would garble.
check_cli_prompt_template(sys.argv[1:])
check_cli_offline_dataset(sys.argv)
