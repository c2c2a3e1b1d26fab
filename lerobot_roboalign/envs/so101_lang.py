"""SO-101 tasks with a camera and a natural-language instruction, for language-conditioned policies.

``lerobot_env_so101`` provides the physics, the tasks and scripted experts, but its
observations carry no instruction and its ``info`` names success ``succeed`` where
``lerobot-eval`` reads ``is_success``. ``SO101LangEnv`` wraps one of its task envs and adds
what a VLA and ``lerobot-eval`` need: a cheap camera frame (``fast_render``), the
instruction as ``task_description``, and one success criterion per task, shared by
recording, the expert reference and ``lerobot-eval``.
"""

from dataclasses import dataclass
from typing import ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from lerobot_env_so101 import SO101PickCubeGymEnv, SO101PickPlaceGymEnv
from lerobot_env_so101.policy import DEFAULT_ACTION_SCALE
from lerobot_env_so101.scripted import PickPlaceController, is_reach_close_success, scripted_reach_close

from ..sim_cli import TASK_NAMES
from .fast_render import DEFAULT_MAX_FACES, SceneCamera
from .variation import (
    CUBE_COLOURS,
    MAX_DISTRACTORS,
    PLACES,
    SceneDraw,
    SceneVariation,
    draw_scene,
    factor_rng,
    phrase,
)

CAMERA = "front"
CAMERA_OFF_GREY = 128  # the frame a switched-off camera sends (``camera_off``): mid-grey, no scene


@dataclass(frozen=True)
class SO101Task:
    """One task: the package env that simulates it, its instruction and its step budget."""

    env_cls: type
    instruction: str
    max_steps: int


# max_steps: about twice the scripted expert's longest episode (reach 8-11 steps, pick-and-place
# 44-55 steps at 10 Hz), so a slower learned policy still has room and a failing one ends soon.
TASKS: dict[str, SO101Task] = dict(zip(TASK_NAMES, (
    SO101Task(SO101PickCubeGymEnv, "reach the cube and close the gripper", 30),
    SO101Task(SO101PickPlaceGymEnv, "pick up the cube and place it {place}", 100),
), strict=True))  # fmt: skip

# pick_and_place's goal, named in the instruction: the package samples it anywhere on the table and draws
# nothing there, so a policy could not know it. The target task's two places (variation.PLACES has four).
GOAL_PLACES: dict[str, tuple[float, float]] = dict(list(PLACES.items())[:2])
_BLOCK_BOUNDS = np.asarray([[0.15, -0.1], [0.3, 0.1]])  # the package's block sampling box
_MIN_GOAL_DISTANCE = 0.08  # the package's minimum block-goal distance
# Distractor blocks stand on the table in this box (x, y), apart from the cube, the goal and each other.
_DISTRACTOR_BOUNDS = np.asarray([[0.12, -0.14], [0.32, 0.14]])  # past x = 0.36 m a block leaves the picture
_DISTRACTOR_CLEARANCE = 0.07


def check_task(task: str) -> SO101Task:
    """The task's spec, or an error listing the valid names."""
    if task not in TASKS:
        raise ValueError(
            f"Unknown SO-101 task {task!r}; choose one of {sorted(TASKS)} (e.g. --env.task=reach_and_close)."
        )
    return TASKS[task]


class SO101LangEnv(gym.Env):
    """One SO-101 task: observation ``{"pixels": {"front": HxWx3}, "agent_pos": (14,)}``.

    The action is the package's native ``[dx, dy, dz, grasp]`` at 2.5 cm per unit (the
    scale its scripted experts are written for), clipped to the action space.

    ``variation`` (off by default: the target tasks) varies the scene per episode seed for the alignment corpus
    (``variation.py``): cube colour, phrasing, goal place, and distractor blocks. The distractors are drawn by the
    camera only (static, no contacts), so the simulated task, its expert and its success check stay the package's.
    """

    metadata: ClassVar[dict] = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        task: str = "reach_and_close",
        image_height: int = 96,
        image_width: int = 96,
        random_block_position: bool = True,
        render_max_faces: int = DEFAULT_MAX_FACES,
        images: bool = True,
        render_mode: str = "rgb_array",
        camera_off: bool = False,
        variation: SceneVariation | None = None,
    ):
        spec = check_task(task)
        self.task = task
        self.task_description = spec.instruction.format(place=next(iter(GOAL_PLACES)))
        self.variation = variation or SceneVariation()
        self.scene: SceneDraw | None = None  # the episode's draw (varied scenes only)
        self.distractors: list[tuple[str, np.ndarray]] = []  # (colour, xyz) of each distractor block
        self.render_mode = render_mode
        self.sim = spec.env_cls(
            image_obs=False, random_block_position=random_block_position, action_scale=DEFAULT_ACTION_SCALE
        )
        self.metadata = {**self.metadata, "render_fps": round(1.0 / self.sim.control_dt)}
        self._image_hw = (image_height, image_width)
        self._render_max_faces = render_max_faces
        self._images = images
        self._camera_off = camera_off
        self._camera: SceneCamera | None = None
        self._frame: np.ndarray | None = None
        obs_space = {"agent_pos": self.sim.observation_space["agent_pos"]}
        if images:
            frame_space = spaces.Box(0, 255, (image_height, image_width, 3), dtype=np.uint8)
            obs_space["pixels"] = spaces.Dict({CAMERA: frame_space})
        self.observation_space = spaces.Dict(obs_space)
        self.action_space = self.sim.action_space

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        obs, _ = self.sim.reset(seed=seed)
        if self.variation.enabled:
            episode_seed = seed if seed is not None else int(self.np_random.integers(2**62))
            self.scene = draw_scene(self.variation, episode_seed, self.task)
        if self.task == "pick_and_place":
            obs = self._place_goal()
        if self.scene is not None:
            self.task_description = phrase(self.task, TASKS[self.task].instruction, self.scene)
            self._place_distractors(episode_seed)
        return self._observe(obs), {"is_success": False}

    def _place_goal(self) -> dict:
        """Move the goal to a named place (in the instruction) and the block away from it if too close."""
        import mujoco

        if self.scene is None:
            place = list(GOAL_PLACES)[int(self.np_random.integers(len(GOAL_PLACES)))]
        else:
            place = self.scene.place
        self.task_description = TASKS[self.task].instruction.format(place=place)
        goal = np.asarray(PLACES[place])
        sim = self.sim
        sim._goal_pos = np.asarray([*goal, sim._block_z])
        block = sim._data.jnt("block").qpos
        while np.linalg.norm(block[:2] - goal) < _MIN_GOAL_DISTANCE:
            block[:2] = self.np_random.uniform(*_BLOCK_BOUNDS)
        mujoco.mj_forward(sim._model, sim._data)
        sim._z_init = sim._data.sensor("block_pos").data[2]
        return sim._compute_observation()

    def step(self, action: np.ndarray):
        action = np.asarray(action, dtype=np.float32).reshape(-1)
        if action.shape != self.action_space.shape or not np.all(np.isfinite(action)):
            raise ValueError(
                f"SO-101 action must be {self.action_space.shape[0]} finite numbers [dx, dy, dz, grasp], got "
                f"{action}; check the policy's output (NaN usually means an untrained or diverged model)."
            )
        action = np.clip(action, self.action_space.low, self.action_space.high)
        obs, _, sim_terminated, truncated, _ = self.sim.step(action)
        success = self.is_success()
        return (
            self._observe(obs),
            float(success),
            bool(success or sim_terminated),
            truncated,
            {"is_success": success},
        )

    def is_success(self) -> bool:
        """The task's criterion: gripper closed at the cube, or cube carried, set on the target, released."""
        if self.task == "reach_and_close":
            return is_reach_close_success(np.concatenate([self.sim.get_robot_state(), self.block_pos]))
        return self.sim._is_success()

    def _place_distractors(self, episode_seed: int) -> None:
        """Stand the drawn distractors on the table, clear of the cube, the goal and each other."""
        rng = factor_rng(episode_seed, "distractor positions")
        taken = [self.block_pos[:2]] + ([self.sim.goal_pos[:2]] if self.task == "pick_and_place" else [])
        self.distractors = []
        for colour in self.scene.distractor_colours:
            xy = np.asarray([rng.uniform(low, high) for low, high in _DISTRACTOR_BOUNDS.T])
            while min(np.linalg.norm(xy - other) for other in taken) < _DISTRACTOR_CLEARANCE:
                xy = np.asarray([rng.uniform(low, high) for low, high in _DISTRACTOR_BOUNDS.T])
            taken.append(xy)
            self.distractors.append((colour, np.asarray([*xy, self.sim._block_z])))

    @property
    def image_hw(self) -> tuple[int, int]:
        return self._image_hw

    @property
    def block_pos(self) -> np.ndarray:
        return self.sim.data.sensor("block_pos").data.copy()

    def render(self) -> np.ndarray:
        """The frame of the current observation (drawn once per step, reused for videos)."""
        if self._frame is None:
            self._frame = self._draw()
        return self._frame

    def close(self) -> None:
        if self._camera is not None:
            self._camera.close()
            self._camera = None
        self.sim.close()

    def _draw(self) -> np.ndarray:
        if self._camera_off:
            return np.full((*self._image_hw, 3), CAMERA_OFF_GREY, dtype=np.uint8)
        if self._camera is None:
            extra = MAX_DISTRACTORS if self.variation.enabled else 0
            self._camera = SceneCamera(*self._image_hw, CAMERA, self._render_max_faces, distractors=extra)
        if self.scene is not None:
            blocks = [(CUBE_COLOURS[colour], xyz) for colour, xyz in self.distractors]
            self._camera.paint(CUBE_COLOURS[self.scene.colour], blocks)
        return self._camera.render(self.sim.data)

    def _observe(self, sim_obs: dict) -> dict:
        self._frame = None
        obs = {"agent_pos": sim_obs["agent_pos"]}
        if self._images:
            obs["pixels"] = {CAMERA: self.render()}
        return obs


class ScriptedExpert:
    """The package's scripted controller for an env's task, fed the simulator's true state."""

    def __init__(self, env: SO101LangEnv):
        self.env = env
        self._pick_place = PickPlaceController(DEFAULT_ACTION_SCALE) if env.task == "pick_and_place" else None

    def reset(self) -> None:
        if self._pick_place is not None:
            self._pick_place.reset()

    def act(self) -> np.ndarray:
        sim = self.env.sim
        if self._pick_place is None:
            flat_obs = np.concatenate([sim.get_robot_state(), self.env.block_pos])
            return scripted_reach_close(flat_obs, DEFAULT_ACTION_SCALE)
        return self._pick_place.act(sim.ik_point_pos, self.env.block_pos, sim.goal_pos)
