"""``--env.type=so101_lang``: the SO-101 tasks with a camera and an instruction, for ``lerobot-eval``.

``--env.task`` names one task or several separated by commas; ``lerobot-eval`` then
evaluates each in turn and reports it as its own group in ``eval_info.json``
(``per_group[<task>].pc_success``, ``per_task[i].metrics.successes``).
"""

from dataclasses import dataclass, field
from functools import partial

import gymnasium as gym
from lerobot.configs import FeatureType, PolicyFeature
from lerobot.envs.configs import EnvConfig
from lerobot.envs.utils import freeze_after_episode_end
from lerobot.utils.constants import ACTION, OBS_IMAGES, OBS_STATE

# Faces per mesh of the drawn arm (fast_render.py); here so that registering the env needs no MuJoCo (the `sim`
# extra): the plugin must import without it.
DEFAULT_MAX_FACES = 400
AGENT_POS_DIM = 14
ACTION_DIM = 4
PIXELS_KEY = "pixels/front"
IMAGE_KEY = f"{OBS_IMAGES}.front"


@EnvConfig.register_subclass("so101_lang")
@dataclass
class SO101LangEnvConfig(EnvConfig):
    """SO-101 reach-and-close / pick-and-place with a front camera and a language instruction."""

    task: str | None = "reach_and_close"  # "reach_and_close", "pick_and_place", or both comma-separated
    fps: int = 10  # the package's control period is 0.1 s
    episode_length: int | None = None  # None: the task's own budget (so101_lang.TASKS)
    observation_height: int = 96
    observation_width: int = 96
    random_block_position: bool = True
    render_max_faces: int = DEFAULT_MAX_FACES  # per mesh of the drawn (not simulated) arm
    # A control: the camera sends a uniform grey frame, so success that survives it did not come from vision.
    camera_off: bool = False
    features: dict[str, PolicyFeature] = field(default_factory=dict)
    features_map: dict[str, str] = field(
        default_factory=lambda: {ACTION: ACTION, "agent_pos": OBS_STATE, PIXELS_KEY: IMAGE_KEY}
    )

    def __post_init__(self) -> None:
        from .so101_lang import check_task

        for task in self.tasks:
            check_task(task)
        if self.episode_length is not None and self.episode_length < 1:
            raise ValueError(
                f"env.episode_length={self.episode_length} must be >= 1 (or unset for the task default)."
            )
        self.features = {
            ACTION: PolicyFeature(type=FeatureType.ACTION, shape=(ACTION_DIM,)),
            "agent_pos": PolicyFeature(type=FeatureType.STATE, shape=(AGENT_POS_DIM,)),
            PIXELS_KEY: PolicyFeature(
                type=FeatureType.VISUAL, shape=(self.observation_height, self.observation_width, 3)
            ),
        }

    @property
    def tasks(self) -> list[str]:
        if not self.task:
            raise ValueError(
                "env.task is empty; set --env.task=reach_and_close, pick_and_place, or both comma-separated."
            )
        return [name.strip() for name in self.task.split(",") if name.strip()]

    @property
    def gym_kwargs(self) -> dict:
        return {
            "image_height": self.observation_height,
            "image_width": self.observation_width,
            "random_block_position": self.random_block_position,
            "render_max_faces": self.render_max_faces,
            "camera_off": self.camera_off,
        }

    def create_envs(
        self, n_envs: int, use_async_envs: bool = False
    ) -> dict[str, dict[int, gym.vector.VectorEnv]]:
        """One vector env per task, each sub-env frozen once its episode ends (no wasted steps)."""
        envs = {}
        for task in self.tasks:
            factory = freeze_after_episode_end(
                partial(make_so101_lang_env, task, self.episode_length, self.gym_kwargs)
            )
            if use_async_envs and n_envs > 1:
                vec = gym.vector.AsyncVectorEnv([factory] * n_envs, context="forkserver")
            else:
                vec = gym.vector.SyncVectorEnv([factory] * n_envs)
            envs[task] = {0: vec}
        return envs


def make_so101_lang_env(task: str, episode_length: int | None, kwargs: dict) -> gym.Env:
    """One task env under a time limit (``lerobot-eval`` reads ``_max_episode_steps`` from it)."""
    from .so101_lang import SO101LangEnv, check_task

    max_steps = episode_length or check_task(task).max_steps
    return gym.wrappers.TimeLimit(SO101LangEnv(task, **kwargs), max_episode_steps=max_steps)
