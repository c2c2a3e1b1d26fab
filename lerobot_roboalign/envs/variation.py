"""Scene variation for the alignment corpus: cube colour, distractor blocks, phrasings and goal places.

The transfer study (docs/study.md) aligns the MLLM on scenes more varied than the target tasks the VLA is trained
and evaluated on. Every factor is off by default (``SceneVariation()``): the target tasks look exactly as they
always did. Each episode draws each factor from its own stream of the episode's seed, so one factor's range does
not shift another's draw. Stdlib only: recording configs import it without MuJoCo.
"""

import random
from dataclasses import astuple, dataclass

# RGBA of the cube. The first is the package's own block colour (the target tasks' cube).
CUBE_COLOURS: dict[str, tuple[float, float, float, float]] = {
    "purple": (0.6, 0.3, 0.6, 1.0),
    "red": (0.85, 0.15, 0.1, 1.0),
    "white": (0.92, 0.92, 0.92, 1.0),
    "green": (0.15, 0.65, 0.2, 1.0),
}
# pick_and_place's goal places (x forward from the robot, y to its left, metres). The first two are the target
# task's; the front one is toward the camera, the back one toward the robot's base.
PLACES: dict[str, tuple[float, float]] = {
    "on the left": (0.20, 0.08),
    "on the right": (0.20, -0.08),
    "at the front": (0.28, 0.0),
    "at the back": (0.14, 0.0),
}
# Rephrasings of each task's canonical instruction (so101_lang.TASKS), which varied scenes never use verbatim.
PHRASINGS: dict[str, tuple[str, ...]] = {
    "reach_and_close": (
        "move to the {colour} cube and close the gripper on it",
        "reach for the {colour} block and shut the gripper",
        "go to the {colour} cube and grasp it",
    ),
    "pick_and_place": (
        "pick up the {colour} cube and put it down {place}",
        "move the {colour} block so that it rests {place}",
        "grab the {colour} cube and set it {place}",
    ),
}
MAX_DISTRACTORS = 2
_FACTORS = ("colour", "distractors", "phrasing", "place")


@dataclass
class SceneVariation:
    """``--variation.*``: how much each factor varies (the defaults: the target tasks' scene, nothing varied)."""

    colours: int = 1  # cube colours drawn among the first N of CUBE_COLOURS (1: the target tasks' purple)
    distractors: int = 0  # up to this many distractor blocks of other colours, 0..N drawn per episode (at most 2)
    rephrase: bool = False  # one of 3 rephrasings (naming the cube's colour) instead of the canonical instruction
    goals: int = 2  # pick_and_place goal places drawn among the first N of PLACES (2: left and right, as the target)

    def __post_init__(self) -> None:
        limits = {"colours": (1, len(CUBE_COLOURS)), "distractors": (0, MAX_DISTRACTORS), "goals": (2, len(PLACES))}
        for name, (low, high) in limits.items():
            if not low <= getattr(self, name) <= high:
                raise ValueError(
                    f"--variation.{name}={getattr(self, name)} is out of range: choose {low} to {high} "
                    f"(the alignment corpus: {ALIGNMENT_VARIATION})."
                )

    @property
    def enabled(self) -> bool:
        return astuple(self) != astuple(SceneVariation())  # by value: AlignmentVariation is a subclass


@dataclass(frozen=True)
class SceneDraw:
    """One episode's draw: the cube's colour, the distractors' colours, the phrasing (None: canonical), the place."""

    colour: str
    distractor_colours: tuple[str, ...]
    phrasing: int | None
    place: str


def factor_rng(seed: int, factor: str) -> random.Random:
    """The episode's own stream for one factor (independent of the simulator's generator and of the others)."""
    return random.Random(f"{seed}/{factor}")


def draw_scene(variation: SceneVariation, seed: int, task: str) -> SceneDraw:
    """Each factor of an episode drawn independently from its seed."""
    colour_names = list(CUBE_COLOURS)
    colour = factor_rng(seed, "colour").choice(colour_names[: variation.colours])
    distractor_rng = factor_rng(seed, "distractors")
    count = distractor_rng.randint(0, variation.distractors)
    others = distractor_rng.sample([name for name in colour_names if name != colour], count)
    phrasing = factor_rng(seed, "phrasing").randrange(len(PHRASINGS[task])) if variation.rephrase else None
    place = factor_rng(seed, "place").choice(list(PLACES)[: variation.goals])
    return SceneDraw(colour, tuple(others), phrasing, place)


def phrase(task: str, canonical: str, draw: SceneDraw) -> str:
    """The episode's instruction: the canonical template, or the drawn rephrasing, with its colour and place."""
    template = canonical if draw.phrasing is None else PHRASINGS[task][draw.phrasing]
    return template.format(colour=draw.colour, place=draw.place)


@dataclass
class AlignmentVariation(SceneVariation):
    """``--variation.*`` of a command whose default is the alignment corpus's scenes (``sim vqa``): a subclass, not a
    default instance, because draccus rebuilds a section from its class's defaults as soon as one field is given."""

    colours: int = 4
    distractors: int = 2
    rephrase: bool = True
    goals: int = 4


ALIGNMENT_VARIATION = AlignmentVariation()

# Reset seeds of the study's corpora (docs/study.md): each owns a block of 10^7 seeds, all far above the evaluation
# seeds (lerobot-eval's 1000 up, the study's 20000-20099 and 30000-30099).
SEED_BLOCK = 10**7
VLA_SEED_BASE = 10**7  # the target tasks' demonstrations: the target scene only
ALIGNMENT_SEED_BASE = 3 * 10**7  # the varied alignment corpus: varied scenes only
PILOT_SEED_BASE = 4 * 10**7
VQA_SEED_BASE = 5 * 10**7  # the scene questions' scenes (scene_vqa.py)
SEEDS_PER_RUN = 10**6  # one recording's seeds: base + seed x 10^6 + [0, 10^6)


def seed_range(seed_base: int, seed: int) -> range:
    """The reset seeds one recording (or question set) with ``seed_base`` and ``seed`` can use."""
    start = seed_base + seed * SEEDS_PER_RUN
    return range(start, start + SEEDS_PER_RUN)


def check_seed_range(seeds: range, varied: bool) -> None:
    """A varied corpus never takes the target tasks' seeds, nor a target-scene one the alignment corpus's."""
    reserved = {
        "the VLA demonstrations (target scene)": (range(VLA_SEED_BASE, VLA_SEED_BASE + SEED_BLOCK), not varied),
        "the alignment corpus (varied scenes)": (range(ALIGNMENT_SEED_BASE, ALIGNMENT_SEED_BASE + SEED_BLOCK), varied),
    }
    if seeds.start < SEED_BLOCK:
        raise ValueError(
            f"Reset seeds {seeds.start}..{seeds.stop - 1} reach below {SEED_BLOCK}, where evaluation seeds live. "
            f"Fix: --seed_base={VLA_SEED_BASE} or higher (and --seed >= 0)."
        )
    for owner, (block, allowed) in reserved.items():
        if not allowed and seeds.start < block.stop and block.start < seeds.stop:
            kind = "varied" if varied else "target-scene"
            fix = ALIGNMENT_SEED_BASE if varied else VLA_SEED_BASE
            raise ValueError(
                f"A {kind} recording with reset seeds {seeds.start}..{seeds.stop - 1} overlaps the seeds of {owner} "
                f"({block.start}..{block.stop - 1}). Fix: --seed_base={fix} (or leave it unset)."
            )


def check_disjoint_seed_ranges(ranges: dict[str, range]) -> None:
    """Corpora that must not share an episode: refuse any two whose seed ranges overlap."""
    named = sorted(ranges.items(), key=lambda item: item[1].start)
    for (first, a), (second, b) in zip(named, named[1:]):
        if b.start < a.stop:
            raise ValueError(
                f"The seed ranges of {first} ({a.start}..{a.stop - 1}) and {second} ({b.start}..{b.stop - 1}) "
                "overlap, so they could hold the same episodes. Fix: give them different --seed_base or --seed."
            )
