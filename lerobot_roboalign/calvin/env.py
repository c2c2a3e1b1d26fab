"""CALVIN's simulator (``calvin_env``, PyBullet) behind LeRobot's env interface: ``--env.type=calvin``.

Scene D, the chain's initial scene and the success oracle come from ``calvin_env`` alone
(``scene.py``); ``calvin_agent`` and the dataset download are not needed.
"""

from dataclasses import dataclass, field
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from lerobot.configs import FeatureType, PolicyFeature
from lerobot.envs.configs import EnvConfig
from lerobot.utils.constants import ACTION, OBS_IMAGES, OBS_STATE

from .protocol import CHAIN_LENGTH, INSTRUCTIONS, MAX_STEPS_PER_SUBTASK, State, sample_chains
from .scene import initial_scene_state, make_scene_d, make_task_oracle, require_calvin

STATIC_CAMERA, GRIPPER_CAMERA, ROBOT_STATE = "rgb_static", "rgb_gripper", "robot_obs"
STATIC_HW, GRIPPER_HW, ROBOT_STATE_DIM = (200, 200), (84, 84), 15


class CalvinChainEnv:
    """A ``protocol.ChainEnv`` over CALVIN's PlayTableSimEnv in scene D.

    Observations come in LeRobot's gym layout: ``pixels`` (static 200x200 and gripper 84x84
    RGB, uint8) and ``agent_pos`` (the 15-D ``robot_obs``); actions are CALVIN's 7-D relative
    end-effector actions, the gripper command binarised to -1 (close) / 1 (open) as the
    official evaluation's models do.
    """

    def __init__(self, dataset_path: str | None = None, use_egl: bool = True):
        self.env = make_scene_d(dataset_path, use_egl)
        self._fresh_state = self.env.p.saveState(physicsClientId=self.env.cid)
        self.oracle = make_task_oracle()
        self.start_info: dict | None = None
        self.current_info: dict | None = None

    @staticmethod
    def _format(obs: dict) -> dict[str, Any]:
        # pybullet-arm64 is built without numpy: its images arrive as int64 arrays.
        rgb = obs["rgb_obs"]
        return {
            "pixels": {cam: np.asarray(rgb[cam], dtype=np.uint8) for cam in (STATIC_CAMERA, GRIPPER_CAMERA)},
            "agent_pos": np.asarray(obs[ROBOT_STATE], dtype=np.float32),
        }

    def reset_to(self, initial_state: State) -> dict[str, Any]:
        """The official evaluation's reset, made independent of what the previous chain did.

        calvin_env's reset sets poses but keeps pybullet's cached contacts and the last gripper
        command, so the same chain started after another one began with the blocks tilted by up
        to 0.2 degrees and the old gripper command in ``robot_obs`` (the official evaluation
        has this history dependence). Here the freshly built env's physics state is restored
        and stepped once (which replaces the cached contacts) before calvin_env's reset: the
        same chain always starts from the same observation.
        """
        robot_obs, scene_obs = initial_scene_state(initial_state)
        self.env.p.restoreState(stateId=self._fresh_state, physicsClientId=self.env.cid)
        self.env.p.stepSimulation(physicsClientId=self.env.cid)
        self.env.robot.gripper_action = int(robot_obs[-1])
        self.env.reset(robot_obs=robot_obs, scene_obs=scene_obs)
        self.current_info = self.env.get_info()
        return self._format(self.env.get_obs())

    def observe(self) -> dict[str, Any]:
        return self._format(self.env.get_obs())

    def begin_subtask(self) -> None:
        self.start_info = self.env.get_info()

    def step(self, action: np.ndarray) -> dict[str, Any]:
        action = np.asarray(action, dtype=np.float64).reshape(-1).copy()
        if action.shape != (7,) or not np.isfinite(action).all():
            raise ValueError(
                f"CALVIN takes finite 7-D relative end-effector actions (dx, dy, dz, droll, dpitch, dyaw, "
                f"gripper); got {action}. Check the policy's action feature and the rename map."
            )
        action[-1] = 1.0 if action[-1] > 0 else -1.0
        obs, _, _, self.current_info = self.env.step(action)
        return self._format(obs)

    def completed_tasks(self, tasks: set[str] | None = None) -> set[str]:
        """Tasks (of ``tasks``, default all 34) the oracle sees done since ``begin_subtask``."""
        if tasks is None:
            return self.oracle.get_task_info(self.start_info, self.current_info)
        return self.oracle.get_task_info_for_set(self.start_info, self.current_info, tasks)

    def task_completed(self, task: str) -> bool:
        return len(self.completed_tasks({task})) > 0

    def close(self) -> None:
        self.env.close()
        self.env.cid = -1  # calvin_env's __del__ closes again: make that a no-op


class CalvinSubtaskGymEnv(gym.Env):
    """For ``lerobot-eval --env.type=calvin``: one LeRobot episode per instruction of a chain.

    LeRobot's rollout resets the policy at each episode, so making each instruction an episode
    gives the official per-instruction reset. The scene is reset only when a chain starts; after
    a success the next episode continues the same chain from where the robot is, after a failure
    (``max_steps_per_subtask`` steps) or the fifth task the next chain starts. ``is_success`` is
    the instruction's success; ``completed_tasks`` counts the chain's tasks done so far.
    ``roboalign calvin eval`` gives the official per-length table.
    """

    metadata: ClassVar[dict] = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(
        self, dataset_path: str | None, num_chains: int, max_steps_per_subtask: int, use_egl: bool = True
    ):
        self.sim = CalvinChainEnv(dataset_path, use_egl)
        self.chains = sample_chains(num_chains)
        self.max_steps_per_subtask = max_steps_per_subtask
        self._max_episode_steps = max_steps_per_subtask
        self.chain_index, self.done_tasks, self.chain_over = -1, 0, True
        self.observation_space = spaces.Dict(
            {
                "pixels": spaces.Dict(
                    {
                        STATIC_CAMERA: spaces.Box(0, 255, (*STATIC_HW, 3), np.uint8),
                        GRIPPER_CAMERA: spaces.Box(0, 255, (*GRIPPER_HW, 3), np.uint8),
                    }
                ),
                "agent_pos": spaces.Box(-np.inf, np.inf, (ROBOT_STATE_DIM,), np.float32),
            }
        )
        self.action_space = spaces.Box(-1.0, 1.0, (7,), np.float32)

    @property
    def task(self) -> str:
        return self.tasks[self.done_tasks]

    @property
    def task_description(self) -> str:
        return INSTRUCTIONS[self.task]

    def reset(self, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if self.chain_over:
            self.chain_index = (self.chain_index + 1) % len(self.chains)
            initial_state, self.tasks = self.chains[self.chain_index]
            self.done_tasks, self.chain_over = 0, False
            self.last_obs = self.sim.reset_to(initial_state)
        self.subtask_steps = 0
        self.sim.begin_subtask()
        return self.last_obs, self._info(False)

    def _info(self, success: bool) -> dict[str, Any]:
        return {"is_success": success, "chain": self.chain_index, "completed_tasks": self.done_tasks}

    def step(self, action: np.ndarray):
        self.last_obs = self.sim.step(action)
        self.subtask_steps += 1
        success = self.sim.task_completed(self.task)
        failed = not success and self.subtask_steps >= self.max_steps_per_subtask
        if success:
            self.done_tasks += 1
        self.chain_over = failed or self.done_tasks == CHAIN_LENGTH
        return self.last_obs, float(success), success or failed, False, self._info(success)

    def render(self) -> np.ndarray:
        return self.last_obs["pixels"][STATIC_CAMERA]

    def close(self) -> None:
        self.sim.close()


@EnvConfig.register_subclass("calvin")
@dataclass
class CalvinEnv(EnvConfig):
    """``--env.type=calvin``: CALVIN scene D; each episode is one instruction of a 5-instruction chain."""

    task: str = "calvin_abc_d"
    fps: int = 30
    # Empty: scene D from calvin_env's own configs. Or CALVIN's task_ABC_D download, whose
    # validation/.hydra/merged_config.yaml the official evaluation reads.
    dataset_path: str | None = None
    num_chains: int = 1000
    max_steps_per_subtask: int = MAX_STEPS_PER_SUBTASK
    # "egl" (how CALVIN's dataset was rendered) or "tiny" (pybullet's CPU TinyRenderer).
    renderer: str = "egl"
    features: dict[str, PolicyFeature] = field(
        default_factory=lambda: {
            ACTION: PolicyFeature(type=FeatureType.ACTION, shape=(7,)),
            STATIC_CAMERA: PolicyFeature(type=FeatureType.VISUAL, shape=(*STATIC_HW, 3)),
            GRIPPER_CAMERA: PolicyFeature(type=FeatureType.VISUAL, shape=(*GRIPPER_HW, 3)),
            ROBOT_STATE: PolicyFeature(type=FeatureType.STATE, shape=(ROBOT_STATE_DIM,)),
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

    def __post_init__(self) -> None:
        if self.renderer not in ("egl", "tiny"):
            raise ValueError(f"--env.renderer must be 'egl' or 'tiny', got {self.renderer!r}.")

    @property
    def gym_kwargs(self) -> dict:
        return {
            "dataset_path": self.dataset_path,
            "num_chains": self.num_chains,
            "max_steps_per_subtask": self.max_steps_per_subtask,
            "use_egl": self.renderer == "egl",
        }

    def create_envs(
        self, n_envs: int, use_async_envs: bool = False
    ) -> dict[str, dict[int, gym.vector.VectorEnv]]:
        require_calvin()
        if n_envs != 1:
            raise ValueError(
                f"CALVIN runs one simulator per process: set --eval.batch_size=1 (got {n_envs})."
            )
        vec = gym.vector.SyncVectorEnv([lambda: CalvinSubtaskGymEnv(**self.gym_kwargs)])
        return {self.type: {0: vec}}
