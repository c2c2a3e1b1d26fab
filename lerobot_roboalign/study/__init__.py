"""`roboalign study`: the pre-registered transfer study of docs/study.md, end to end and resumable.

Does aligning the MLLM on a large, varied corpus (SFT, then GRPO) make a better frozen backbone for a VLA
trained on few demonstrations of other tasks? Rows base / SFT / RoboAlign / matched SFT, 4 head seeds each, all
evaluated on the same seeds, compared with paired cluster-bootstrap intervals and the pre-registered decision
rule. Light on import (``--help`` reads config.py only); the stages import what they run.
"""

from pathlib import Path


def main(argv: list[str] | None = None) -> Path:
    import logging

    from .config import parse_config
    from .pipeline import run

    logging.basicConfig(level=logging.INFO)
    return run(parse_config(list(argv or [])))
