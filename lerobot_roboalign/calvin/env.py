"""CALVIN's simulator (``calvin_env``, PyBullet) behind LeRobot's env interface: ``--env.type=calvin``.

``calvin_env`` is not on PyPI: install CALVIN from source (see ``INSTALL_FIX``). The scene
reset for a symbolic initial state and the task-success oracle are CALVIN's own
(``calvin_agent.evaluation.utils`` and the ``new_playtable_tasks`` config), imported, not
re-implemented, so success is judged exactly as in the official evaluation.
"""

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from lerobot.configs import FeatureType, PolicyFeature
from lerobot.envs.configs import EnvConfig
from lerobot.utils.constants import ACTION, OBS_IMAGES, OBS_STATE

from .protocol import CHAIN_LENGTH, INSTRUCTIONS, MAX_STEPS_PER_SUBTASK, State, sample_chains

INSTALL_FIX = (
    "CALVIN's simulator is not on PyPI; install it from source into this environment:\n"
    "  git clone --recurse-submodules https://github.com/mees/calvin.git && cd calvin\n"
    "  pip install -e calvin_env/tacto -e calvin_env -e calvin_models\n"
    "and download the ABC->D split (its validation/ folder holds the scene D config): "
    "cd dataset && sh download_data.sh ABC"
)
STATIC_CAMERA, GRIPPER_CAMERA, ROBOT_STATE = "rgb_static", "rgb_gripper", "robot_obs"


def require_calvin() -> None:
    for module in ("calvin_env", "calvin_agent", "hydra", "omegaconf"):
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise ImportError(f"CALVIN needs the '{module}' module, which is missing. {INSTALL_FIX}") from err


class CalvinChainEnv:
    """A ``protocol.ChainEnv`` over CALVIN's PlayTableSimEnv (scene D of the ABC->D split).

    Observations come in LeRobot's gym layout: ``pixels`` (static 200x200 and gripper 84x84
    RGB cameras) and ``agent_pos`` (the 15-D ``robot_obs``); actions are CALVIN's 7-D relative
    end-effector actions, the gripper command binarised to -1/1.
    """

    def __init__(self, dataset_path: str):
        require_calvin()
        from calvin_agent.evaluation.utils import get_env
        from hydra.utils import instantiate
        from omegaconf import OmegaConf

        validation = Path(dataset_path).expanduser() / "validation"
        if not (validation / ".hydra" / "merged_config.yaml").is_file():
            raise FileNotFoundError(
                f"{validation} is not a CALVIN validation folder (no .hydra/merged_config.yaml): point "
                "--dataset_path at the task_ABC_D folder of CALVIN's dataset download."
            )
        import calvin_agent

        tasks_config = (
            Path(calvin_agent.__file__).parents[1] / "conf/callbacks/rollout/tasks/new_playtable_tasks.yaml"
        )
        self.env = get_env(validation, show_gui=False)
        self.oracle = instantiate(OmegaConf.load(tasks_config))
        self.start_info: dict | None = None

    @staticmethod
    def _format(obs: dict) -> dict[str, Any]:
        rgb = obs["rgb_obs"]
        return {
            "pixels": {STATIC_CAMERA: rgb[STATIC_CAMERA], GRIPPER_CAMERA: rgb[GRIPPER_CAMERA]},
            "agent_pos": np.asarray(obs[ROBOT_STATE], dtype=np.float32),
        }

    def reset_to(self, initial_state: State) -> dict[str, Any]:
        from calvin_agent.evaluation.utils import get_env_state_for_initial_condition

        robot_obs, scene_obs = get_env_state_for_initial_condition(initial_state)
        self.env.reset(robot_obs=robot_obs, scene_obs=scene_obs)
        return self._format(self.env.get_obs())

    def begin_subtask(self) -> None:
        self.start_info = self.env.get_info()

    def step(self, action: np.ndarray) -> dict[str, Any]:
        action = np.asarray(action, dtype=np.float64).reshape(-1).copy()
        action[-1] = 1.0 if action[-1] > 0 else -1.0
        obs, _, _, self.current_info = self.env.step(action)
        return self._format(obs)

    def task_completed(self, task: str) -> bool:
        return len(self.oracle.get_task_info_for_set(self.start_info, self.current_info, {task})) > 0


class CalvinChainGymEnv(gym.Env):
    """One CALVIN chain per episode, for ``lerobot-eval --env.type=calvin``.

    The instruction (``task_description``) moves to the next task when one is done; the episode
    ends on the first failure (360 steps without success) or after the fifth task, and counts as a
    success only if all five were done. ``roboalign calvin eval`` gives the official per-length
    numbers; this env gives LeRobot's success rate (= success at 5/5) and videos.
    """

    metadata: ClassVar[dict] = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(self, dataset_path: str, num_chains: int, max_steps_per_subtask: int):
        self.sim = CalvinChainEnv(dataset_path)
        self.chains = sample_chains(num_chains)
        self.max_steps_per_subtask = max_steps_per_subtask
        self._max_episode_steps = CHAIN_LENGTH * max_steps_per_subtask
        self.chain_index = -1
        self.observation_space = spaces.Dict(
            {
                "pixels": spaces.Dict(
                    {
                        STATIC_CAMERA: spaces.Box(0, 255, (200, 200, 3), np.uint8),
                        GRIPPER_CAMERA: spaces.Box(0, 255, (84, 84, 3), np.uint8),
                    }
                ),
                "agent_pos": spaces.Box(-np.inf, np.inf, (15,), np.float32),
            }
        )
        self.action_space = spaces.Box(-1.0, 1.0, (7,), np.float32)

    @property
    def task_description(self) -> str:
        return INSTRUCTIONS[self.tasks[self.done_tasks]] if self.done_tasks < CHAIN_LENGTH else ""

    def reset(self, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.chain_index = (self.chain_index + 1) % len(self.chains)
        initial_state, self.tasks = self.chains[self.chain_index]
        self.done_tasks, self.subtask_steps = 0, 0
        self.last_obs = self.sim.reset_to(initial_state)
        self.sim.begin_subtask()
        return self.last_obs, {"is_success": False}

    def step(self, action: np.ndarray):
        self.last_obs = self.sim.step(action)
        self.subtask_steps += 1
        if self.sim.task_completed(self.tasks[self.done_tasks]):
            self.done_tasks, self.subtask_steps = self.done_tasks + 1, 0
            if self.done_tasks < CHAIN_LENGTH:
                self.sim.begin_subtask()
        success = self.done_tasks == CHAIN_LENGTH
        failed = self.subtask_steps >= self.max_steps_per_subtask
        info = {"is_success": success, "completed_tasks": self.done_tasks}
        return self.last_obs, float(success), success or failed, False, info

    def render(self) -> np.ndarray:
        return self.last_obs["pixels"][STATIC_CAMERA]


@EnvConfig.register_subclass("calvin")
@dataclass
class CalvinEnv(EnvConfig):
    """``--env.type=calvin``: CALVIN scene D, one chain of 5 instructions per episode."""

    task: str = "calvin_abc_d"
    fps: int = 30
    dataset_path: str = "calvin/dataset/task_ABC_D"  # the CALVIN download; its validation/ holds scene D
    num_chains: int = 1000
    max_steps_per_subtask: int = MAX_STEPS_PER_SUBTASK
    features: dict[str, PolicyFeature] = field(
        default_factory=lambda: {
            ACTION: PolicyFeature(type=FeatureType.ACTION, shape=(7,)),
            STATIC_CAMERA: PolicyFeature(type=FeatureType.VISUAL, shape=(200, 200, 3)),
            GRIPPER_CAMERA: PolicyFeature(type=FeatureType.VISUAL, shape=(84, 84, 3)),
            ROBOT_STATE: PolicyFeature(type=FeatureType.STATE, shape=(15,)),
        }
    )
    features_map: dict[str, str] = field(
        default_factory=lambda: {
            ACTION: ACTION,
            STATIC_CAMERA: f"{OBS_IMAGES}.{STATIC_CAMERA}",
            GRIPPER_CAMERA: f"{OBS_IMAGES}.{GRIPPER_CAMERA}",
            ROBOT_STATE: OBS_STATE,
        }
    )

    @property
    def gym_kwargs(self) -> dict:
        return {
            "dataset_path": self.dataset_path,
            "num_chains": self.num_chains,
            "max_steps_per_subtask": self.max_steps_per_subtask,
        }

    def create_envs(
        self, n_envs: int, use_async_envs: bool = False
    ) -> dict[str, dict[int, gym.vector.VectorEnv]]:
        require_calvin()
        if n_envs != 1:
            raise ValueError(
                f"CALVIN runs one simulator per process: set --eval.batch_size=1 (got {n_envs})."
            )
        vec = gym.vector.SyncVectorEnv([lambda: CalvinChainGymEnv(**self.gym_kwargs)])
        return {self.type: {0: vec}}
