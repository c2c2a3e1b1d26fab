"""`roboalign demo`: the whole RoboAlign pipeline offline, on a simulated SO-101, in minutes.

It calls the public commands a user runs at scale (``roboalign sim record``, ``roboalign tokenizer fit``,
``roboalign align reason|sft|grpo``, ``lerobot-train``, ``lerobot-eval``); only the data source
(scripted simulator demonstrations) and the tiny random backbone are demo-specific. It has the transfer
study's structure (docs/study.md) at a few minutes' size: the MLLM is aligned on a varied alignment corpus and
the VLA heads are trained on few demonstrations of the target tasks, recordings with disjoint seeds, both seen
with one prompt and image size. The paper's "RoboAlign without RL" vs "RoboAlign" rows are reproduced in
miniature: two VLAs that differ only in their backbone (after SFT, after SFT + GRPO), evaluated closed loop on
held-out seeds, next to the scripted expert, beside a VLA on the unaligned base backbone. Alignment trains on
some corpus episodes and is scored on frames of the others, with a completion cap sized from the data, next to
blind baselines. Every stage records its wall time and a fingerprint of its settings: a finished stage is
reused only with the same settings, and an interrupted one resumes (recording chunks, TRL and
lerobot-train checkpoints) or restarts cleanly (evaluation). The modules: config (sizes, seeds, recipe),
stages (the stage functions ``roboalign study`` reuses, and the resumable ``Stages``), pipeline (the demo's
order), report, plots, statistics.
"""

from .config import QUICK, TASKS, DemoConfig, DemoSizes, parse_config
from .pipeline import main, run
from .report import interval, number, paired_cell, report_header, success_cell
from .stages import Stages, count_successes
from .statistics import paired_on_decoded, wilson_interval

__all__ = [
    "QUICK",
    "TASKS",
    "DemoConfig",
    "DemoSizes",
    "Stages",
    "count_successes",
    "interval",
    "main",
    "number",
    "paired_cell",
    "paired_on_decoded",
    "parse_config",
    "report_header",
    "run",
    "success_cell",
    "wilson_interval",
]
