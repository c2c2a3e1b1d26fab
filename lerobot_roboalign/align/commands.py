"""The ``roboalign align`` commands: each parses its config (config.py, stdlib only) before it imports its stage,
so ``--help`` and a misspelt flag answer at once instead of after torch, transformers and TRL have loaded."""

from pathlib import Path

import draccus

from lerobot_roboalign.align.config import (
    AlignGRPOConfig,
    AlignSFTConfig,
    GenerateConfig,
    PlanConfig,
    ReasonConfig,
)


def main_reason(argv: list[str] | None = None) -> Path:
    cfg = draccus.parse(config_class=ReasonConfig, args=argv or [])
    from lerobot_roboalign.align.reason import run

    return run(cfg)


def main_sft(argv: list[str] | None = None) -> Path:
    cfg = draccus.parse(config_class=AlignSFTConfig, args=argv or [])
    from lerobot_roboalign.align.sft import run

    return run(cfg)


def main_grpo(argv: list[str] | None = None) -> Path:
    cfg = draccus.parse(config_class=AlignGRPOConfig, args=argv or [])
    from lerobot_roboalign.align.grpo import run

    return run(cfg)


def main_plan(argv: list[str] | None = None) -> dict:
    cfg = draccus.parse(config_class=PlanConfig, args=argv or [])
    from lerobot_roboalign.align.plan import run

    return run(cfg)


def main_generate(argv: list[str] | None = None) -> dict:
    cfg = draccus.parse(config_class=GenerateConfig, args=argv or [])
    from lerobot_roboalign.align.generate import show

    return show(cfg)
