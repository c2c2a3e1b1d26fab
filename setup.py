"""Metadata is in pyproject.toml; this only adds the repository's robots/ and calibration/ to a built wheel.

They stay at the repository root (the journeys use them by path from a clone); a wheel carries a copy as
package data under lerobot_roboalign/_shipped, which `roboalign files export DIR` writes out.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SHIPPED_DIRS = ("robots", "calibration")


class BuildPyWithShippedFiles(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):  # an editable install reads them from the clone
            return
        for name in SHIPPED_DIRS:
            target = Path(self.build_lib) / "lerobot_roboalign" / "_shipped" / name
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(Path(__file__).parent / name, target)


setup(cmdclass={"build_py": BuildPyWithShippedFiles})
