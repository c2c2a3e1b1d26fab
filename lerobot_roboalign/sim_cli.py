"""``roboalign sim record``: its config and entry point, import-light (stdlib and draccus) so that ``--help``
prints at once; the recording itself (sim_demos.py) imports MuJoCo and LeRobot only when it runs."""

from dataclasses import dataclass, field
from pathlib import Path

import draccus

from .envs.variation import SceneVariation

# The simulated SO-101 tasks, in order (envs/so101_lang.py's TASKS holds each one's env, instruction and budget).
TASK_NAMES = ("reach_and_close", "pick_and_place")


@dataclass
class RecordDemosConfig:
    """``roboalign sim record``: where to write and how much to record."""

    root: Path = Path("outputs/so101_demos")
    repo_id: str = "local/so101_scripted"
    tasks: list[str] = field(default_factory=lambda: list(TASK_NAMES))
    episodes_per_task: int = 30
    seed: int = 0
    image_height: int = 96
    image_width: int = 96
    fps: int = 10
    chunk_episodes: int = 10
    use_videos: bool = True  # lossless H.264 (VIDEO_ENCODER); False: PNG frames in parquet, 3x slower to train on
    workers: int = 1  # chunks recorded at once, one process each (the same dataset, sooner)
    # Reset seeds: seed_base + seed x 10^6 + [0, 10^6). Unset: 10^7 (the VLA demonstrations) for the target scene,
    # 3 x 10^7 (the alignment corpus) for a varied one; a varied recording never takes 10^7..2x10^7-1 (envs/variation.py).
    seed_base: int | None = None
    # The alignment corpus: --variation.colours=4 --variation.distractors=2 --variation.rephrase=true
    # --variation.goals=4. Unset: the target tasks' scene and canonical instruction.
    variation: SceneVariation = field(default_factory=SceneVariation)


def main(argv: list[str] | None = None) -> None:
    cfg = draccus.parse(config_class=RecordDemosConfig, args=argv)
    from .sim_demos import record_from_config

    record_from_config(cfg)
