"""What `roboalign demo` runs: its sizes, seeds and the alignment recipe it departs from the paper's with."""

from dataclasses import dataclass, field, replace
from pathlib import Path

import draccus

TASKS = ("reach_and_close", "pick_and_place")
REPO_ID = "local/so101_scripted"  # the VLA demonstrations
CORPUS_REPO_ID = "local/so101_alignment"  # the alignment corpus
CUBE_PROBE_SEED_OFFSET = 10_000  # the cube probe's first frames: past the evaluation's seeds, before recording's

# Departures from the paper's recipe, each because the backbone is a random 1M-parameter model, not a pretrained 7B
# (measured in an SFT sweep, docs/results.md): a random backbone has everything to learn, so a higher learning
# rate (paper: 2e-5) and a trained vision tower (paper: frozen; a random one has nothing to keep); FAST's scale is 4
# (FAST's default 10): coarser coefficients, shorter spans, which the tiny model learns sooner.
SFT_LR = 2e-3
FREEZE_VISION = False
# One prompt for alignment and VLA (docs/study.md): the VLA leaves {state} empty (its head gets the state), so the
# alignment prompt has no state text either. The SFT sweep found the tiny model, without it, learns the format but
# not the actions in minutes; an aligned model trained with it ran off its training distribution in the VLA.
ALIGN_WITH_STATE = False
# The state entries written where the state is in the prompt (the study's pilot): the end effector's position and
# the gripper, the quantities the actions (dx, dy, dz, grasp) change; the joint angles and velocities would triple
# the prompt's state text for no information the tiny model uses (SFT's cost grows with the tokens).
ALIGN_STATE_NAMES = ("ee_x", "ee_y", "ee_z", "gripper_pose")
FAST_SCALE = 4.0
GRPO_LR = 1e-4  # the paper's 1e-6 moves a 7B model; a 1M-parameter one needs more
VLA_LR = 1e-3  # a head trained from scratch in about a thousand steps (the policy's default 1e-4 suits 30K+)
BASELINE_FRAMES = 400  # training frames the blind baselines are fitted on (the sample loader decodes images)


@dataclass
class DemoSizes:
    """How much of everything. With one recording for alignment and VLA (300 + 30 episodes) the defaults took
    18.7-24.1 minutes on 2 CPU cores (docs/demo/report.md); the two recordings below add about a minute."""

    # The alignment corpus (tokenizer, reasoning, SFT, GRPO, alignment scores): varied scenes, seeds of its own.
    # reach_and_close episodes are ~9 frames, pick_and_place's ~48.
    corpus_reach_episodes: int = 300
    corpus_pick_episodes: int = 60
    # The VLA demonstrations (the heads and the action probe): few, of the target tasks' own scene (the study's 30
    # per task). The earlier one-recording demo gave the head 300 reach_and_close episodes to find the cube with.
    reach_episodes: int = 30
    pick_episodes: int = 30
    image_size: int = 96
    chunk_size: int = 16
    n_action_steps: int = 8
    sft_steps: int = 1400
    grpo_steps: int = 64
    grpo_generations: int = 4
    grpo_samples: int = 64
    score_samples: int = 128  # frames of held-out episodes scored (greedy, one completion each)
    vla_steps: int = 4500
    vla_batch_size: int = 8
    vla_head_hidden_size: int = 128  # two tasks in one head: 64x2 (the tests' size) underfits them
    vla_head_layers: int = 4
    eval_episodes_per_task: int = 20
    holdout_every: int = 5  # every 5th episode is held out of alignment (and of the probes' fit) and scored on
    vla_save_every: int = 1500  # lerobot-train checkpoints: a killed VLA stage resumes from the last one
    # Evaluate every checkpoint, not only the last (success against training steps): one more lerobot-eval per
    # checkpoint and row, which the full run's 25 minutes do not hold.
    eval_every_checkpoint: bool = False
    probe_frames: int = 800  # frames the action-chunk probes draw from the VLA demonstrations
    cube_probe_frames: int = 300  # most first frames the cube-position probe fits on (fewer: the VLA demos' count)
    cube_probe_test: int = 100  # first frames it is scored on


QUICK = DemoSizes(
    corpus_reach_episodes=4,
    corpus_pick_episodes=4,
    reach_episodes=4,
    pick_episodes=4,
    sft_steps=30,
    grpo_steps=4,
    grpo_samples=16,
    score_samples=4,
    vla_steps=20,
    vla_head_hidden_size=64,
    vla_head_layers=2,
    eval_episodes_per_task=2,
    holdout_every=4,
    vla_save_every=10,
    eval_every_checkpoint=True,
    cube_probe_frames=24,
    cube_probe_test=16,
)


@dataclass
class DemoConfig:
    output_dir: Path = Path("outputs/demo")
    quick: bool = False  # a few minutes: fewer episodes and training steps, every stage still runs
    sizes: DemoSizes = field(default_factory=DemoSizes)
    seed: int = 0
    # Recordings use seeds from 10^7 up (VLA demonstrations) and 3x10^7 up (alignment corpus): evaluation's are apart.
    eval_seed: int = 1000
    # CPU threads per process (this one and every stage's subprocess). On a shared 2-core machine two OpenMP
    # threads per process ran a small MLP 19x slower than one (200 s vs 10.5 s, load 9); 0 = torch's default.
    cpu_threads: int = 1
    # Stages running at once, at most (the VLA rows beside the alignment); 2 uses both cores of a 2-core machine.
    parallel_stages: int = 2

    def __post_init__(self) -> None:
        if self.quick and self.sizes == DemoSizes():
            self.sizes = QUICK


def recorded_episodes(sizes: DemoSizes) -> dict[str, int]:
    """VLA demonstrations recorded per task, in TASKS order."""
    return dict(zip(TASKS, (sizes.reach_episodes, sizes.pick_episodes), strict=True))


def corpus_episodes(sizes: DemoSizes) -> dict[str, int]:
    """Alignment-corpus episodes recorded per task, in TASKS order."""
    return dict(zip(TASKS, (sizes.corpus_reach_episodes, sizes.corpus_pick_episodes), strict=True))


def parse_config(argv: list[str]) -> DemoConfig:
    """``--quick`` takes the quick sizes as its base; ``--sizes.*`` given with it change only those fields."""
    argv = ["--quick=true" if arg == "--quick" else arg for arg in argv]
    cfg = draccus.parse(config_class=DemoConfig, args=argv)
    if cfg.quick:
        given = {arg.removeprefix("--sizes.").split("=", 1)[0] for arg in argv if arg.startswith("--sizes.")}
        cfg.sizes = replace(QUICK, **{name: getattr(cfg.sizes, name) for name in given})
    return cfg
