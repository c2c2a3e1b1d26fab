"""What `roboalign study` runs (docs/study.md): sizes, seed ranges, rows and the pilots' switches.

Import-light on purpose (stdlib and draccus only): ``roboalign study --help`` parses this module alone.
"""

from dataclasses import dataclass, field, replace
from pathlib import Path

import draccus

TASKS = ("reach_and_close", "pick_and_place")
ROWS = ("base", "sft", "roboalign", "matched_sft")
ROW_NAMES = {
    "base": "base",
    "sft": "RoboAlign without RL (SFT)",
    "roboalign": "RoboAlign (SFT + GRPO)",
    "matched_sft": "matched SFT (SFT on GRPO's samples)",
}
BASES = ("random", "vqa")
# Reset seeds of each recording: `sim record --seed_base=B --seed=K` records from B + K x 10^6 up
# (envs/variation.py). Finals: the VLA demonstrations from 10^7 (the demo's range), the probe's extra target-task
# demonstrations 1.1 x 10^7 (the same range, disjoint), the alignment corpus from 3 x 10^7, the scene questions from
# 5 x 10^7 and their held-out scenes from 5.1 x 10^7. Pilots: all from 4 x 10^7, one block of 10^6 each.
FINAL_SEEDS = {
    "vla": (10**7, 0),
    "probe": (10**7, 1),
    "alignment": (3 * 10**7, 0),
    "vqa": (5 * 10**7, 0),
    "vqa_heldout": (5 * 10**7, 1),
}
PILOT_SEEDS = {
    "vla": (4 * 10**7, 0),
    "probe": (4 * 10**7, 1),
    "alignment": (4 * 10**7, 2),
    "vqa": (4 * 10**7, 3),
    "vqa_heldout": (4 * 10**7, 4),
}
EVAL_SEED, PILOT_EVAL_SEED = 20_000, 30_000

# The VQA base's optimiser: measured on 200 scenes (held-out 0.540 against the blind majority's 0.443 after 600
# steps, lr 5e-4), where 2e-3 learned only the answer priors; the vision tower trains so that the base can
# read the cube's side off the picture (docs/study.md, Changes).
VQA_BASE_ARGS = ("--training.learning_rate=5e-4", "--training.lr_scheduler_type=constant",
                 "--training.warmup_ratio=0", "--model.freeze_vision=false")


@dataclass
class StudySizes:
    """docs/study.md's sizes; ``--tiny`` shrinks every one of them to check the chain in minutes."""

    alignment_episodes_per_task: int = 300  # 600 in all: 10x the VLA's 60
    vla_episodes_per_task: int = 30
    eval_episodes_per_task: int = 100
    probe_demos: list[int] = field(default_factory=lambda: [10, 20, 50, 100])  # per task, for the probe curve
    probe_test_episodes_per_task: int = 20  # held-out target-task episodes the probe is scored on
    probe_frames_per_episode: int = 4  # evenly spaced frames of each probe episode (features cost per frame)
    vqa_episodes: int = 400  # simulated scenes the scene questions are asked about
    vqa_heldout_episodes: int = 100  # other scenes, whose questions score every backbone (no model trains on them)
    vqa_ratio: float = 0.5  # VQA samples per action sample in the alignment SFT
    vqa_base_steps: int = 600
    image_size: int = 96
    chunk_size: int = 16
    n_action_steps: int = 8
    sft_steps: int = 1400
    sft_batch_size: int = 8
    grpo_steps: int = 64  # the demo's budget; --grpo_budget multiplies steps and prompts
    grpo_generations: int = 4
    grpo_samples: int = 64
    score_frames: int = 256
    holdout_every: int = 10  # alignment episodes held out of SFT and GRPO, scored on
    head_steps: int = 1500
    head_batch_size: int = 8
    head_hidden_size: int = 128
    head_layers: int = 4


TINY = StudySizes(
    alignment_episodes_per_task=4,
    vla_episodes_per_task=2,
    eval_episodes_per_task=2,
    probe_demos=[1, 2],
    probe_test_episodes_per_task=1,
    probe_frames_per_episode=2,
    vqa_episodes=8,
    vqa_heldout_episodes=4,
    vqa_base_steps=4,
    sft_steps=4,
    sft_batch_size=2,
    grpo_steps=2,
    grpo_generations=2,
    grpo_samples=4,
    score_frames=4,
    holdout_every=4,
    head_steps=4,
    head_batch_size=2,
    head_hidden_size=32,
    head_layers=1,
)


@dataclass
class StudyConfig:
    output_dir: Path = Path("outputs/study")
    sizes: StudySizes = field(default_factory=StudySizes)
    tiny: bool = (
        False  # every size at its smallest: checks that the chain runs, says nothing about the method
    )
    pilot: bool = (
        False  # the pilots' seed ranges (recording 4x10^7 + i, evaluation 30000-30099): never pooled
    )
    base: str = "vqa"  # random | vqa: the base backbone (pilot P2 decides)
    state_text: bool = False  # the robot state written into the prompt, alignment and VLA alike (pilot P1)
    grpo_budget: float = (
        1.0  # GRPO steps and prompts, in multiples of the demo's 64 x 64 (pilot P3: 1, 4, 16)
    )
    rows: list[str] = field(default_factory=lambda: list(ROWS))
    head_seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3])
    seed: int = 0  # backbone, alignment and data-sampling seed (head seeds are separate)
    cpu_threads: int = 1  # per process; 2 threads per process ran 19x slower on a loaded 2-core machine
    workers: int = 2  # stages at once (heads and evaluations beside each other and the alignment)
    # Run only this stage and the stages it needs, then stop without a report: the pilots P1 and P3 need only
    # `score` (alignment before/after GRPO), e.g. --only=score --grpo_budget=4.
    only: str | None = None

    def __post_init__(self) -> None:
        if self.tiny and self.sizes == StudySizes():
            self.sizes = replace(TINY)
        if self.base not in BASES:
            raise ValueError(f"--base={self.base!r}: choose one of {', '.join(BASES)}.")
        unknown = sorted(set(self.rows) - set(ROWS))
        if unknown or not self.rows:
            raise ValueError(f"--rows={self.rows}: rows are among {', '.join(ROWS)} (at least one).")
        if not self.head_seeds or len(set(self.head_seeds)) != len(self.head_seeds):
            raise ValueError(
                f"--head_seeds={self.head_seeds}: give one or more distinct seeds, e.g. [0,1,2,3]."
            )
        if self.grpo_budget <= 0:
            raise ValueError(
                f"--grpo_budget={self.grpo_budget}: a positive multiple of the demo's GRPO budget."
            )

    def seeds(self, corpus: str) -> tuple[int, int]:
        """(seed_base, seed) of a corpus's recording: vla, probe, alignment, vqa or vqa_heldout."""
        return (PILOT_SEEDS if self.pilot else FINAL_SEEDS)[corpus]

    @property
    def eval_seed(self) -> int:
        return PILOT_EVAL_SEED if self.pilot else EVAL_SEED

    @property
    def grpo_steps(self) -> int:
        return max(1, round(self.sizes.grpo_steps * self.grpo_budget))

    @property
    def grpo_samples(self) -> int:
        return max(1, round(self.sizes.grpo_samples * self.grpo_budget))

    def row_order(self) -> list[str]:
        """The rows asked for, in ROWS order (the comparisons read base before the aligned rows)."""
        return [row for row in ROWS if row in self.rows]


def parse_config(argv: list[str]) -> StudyConfig:
    """``--tiny``/``--pilot`` may be given bare; with ``--tiny`` the ``--sizes.*`` given change only those fields."""
    argv = [f"{arg}=true" if arg in ("--tiny", "--pilot", "--state_text") else arg for arg in argv]
    try:
        cfg = draccus.parse(config_class=StudyConfig, args=argv)
    except (
        draccus.utils.ParsingError
    ) as error:  # our own checks' message, not draccus's "couldn't instantiate"
        raise error.__cause__ if isinstance(error.__cause__, ValueError) else error
    if cfg.tiny:
        given = {arg.removeprefix("--sizes.").split("=", 1)[0] for arg in argv if arg.startswith("--sizes.")}
        cfg.sizes = replace(TINY, **{name: getattr(cfg.sizes, name) for name in given})
    return cfg
