"""CALVIN on its real simulator (calvin_env, scene D, EGL): reset, observations, actions, task oracle, both CLIs.

These need calvin_env, which is not on PyPI: ``make setup`` installs it from ../shared/calvin
(or CALVIN_SRC) when present; otherwise they skip. Steps per instruction are capped in the CLI
tests (an untrained policy fails its first instruction, so each chain ends after the cap): the
chain logic, the oracle and the writing of results are the official protocol's, only shorter.
"""

import ast
import importlib.util
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from lerobot_roboalign.calvin.protocol import INSTRUCTIONS, initial_states, run_chain, sample_chains
from lerobot_roboalign.calvin.scene import INSTALL_FIX, fnv1_32, initial_scene_state

REPO = Path(__file__).resolve().parents[2]
CALVIN_SRC = (REPO / os.environ.get("CALVIN_SRC", "../shared/calvin")).resolve()
needs_calvin_env = pytest.mark.skipif(
    importlib.util.find_spec("calvin_env") is None, reason=f"calvin_env is not installed. {INSTALL_FIX}"
)
EVAL_TARBALLS = sorted(CALVIN_SRC.glob("calvin-eval-*.tar.gz"))
needs_calvin_eval = pytest.mark.skipif(
    not EVAL_TARBALLS, reason=f"no calvin-eval-*.tar.gz in {CALVIN_SRC} (set CALVIN_SRC)"
)
# A scene with the LED off, two blocks in the cabinet: pressing the button turns the LED on.
LED_OFF = {
    "led": 0,
    "lightbulb": 0,
    "slider": "right",
    "drawer": "closed",
    "red_block": "table",
    "blue_block": "slider_right",
    "pink_block": "slider_left",
    "grasped": 0,
}
BUTTON_XY = (-0.12, -0.12)  # base__button's link in scene D (pybullet getLinkState)
RENAME = {
    "observation.images.rgb_static": "observation.images.image",
    "observation.images.rgb_gripper": "observation.images.image2",
}


def official_file(member: str) -> str:
    """A file of CALVIN's official evaluation, read from the tarball in CALVIN_SRC."""
    with tarfile.open(EVAL_TARBALLS[0]) as tar:
        return tar.extractfile(f"calvin/{member}").read().decode()


@needs_calvin_eval
def test_instructions_are_the_official_validation_annotations():
    import yaml

    annotations = yaml.safe_load(official_file("calvin_models/conf/annotations/new_playtable_validation.yaml"))
    assert set(annotations) == set(INSTRUCTIONS)
    assert {task: texts[0] for task, texts in annotations.items()} == INSTRUCTIONS


@needs_calvin_eval
def test_initial_scenes_match_the_official_function_on_all_192_states():
    """The official get_env_state_for_initial_condition, executed from its source with pyhash2's FNV-1."""
    pyhash = pytest.importorskip("pyhash", reason="pyhash2 (dev extra) gives the official hasher")
    import contextlib

    source = official_file("calvin_models/calvin_agent/evaluation/utils.py")
    wanted = {"temp_seed", "get_env_state_for_initial_condition"}
    tree = ast.Module([n for n in ast.parse(source).body if getattr(n, "name", None) in wanted], [])
    namespace = {"np": np, "pi": np.pi, "contextlib": contextlib, "hasher": pyhash.fnv1_32()}
    exec(compile(tree, "official_utils", "exec"), namespace)
    states = initial_states()  # the official 1000 chains start from these 192 (in the same key order)
    assert len(states) == 192
    for state in states:
        assert fnv1_32(str(state.values())) == namespace["hasher"](str(state.values()))
        robot, scene = initial_scene_state(state)
        official_robot, official_scene = namespace["get_env_state_for_initial_condition"](state)
        np.testing.assert_array_equal(robot, official_robot)
        np.testing.assert_array_equal(scene, official_scene)


@pytest.fixture(scope="module")
def sim():
    from lerobot_roboalign.calvin.env import CalvinChainEnv

    env = CalvinChainEnv()  # scene D from calvin_env's configs, EGL
    yield env
    env.close()


def press_button(sim, observation, steps: int) -> tuple[dict, int | None]:
    """Closed gripper above the button, then down onto it; returns (obs, step the LED turned on)."""
    for step in range(steps):
        goal = (*BUTTON_XY, 0.53 if step < 25 else 0.43)
        action = np.zeros(7)
        action[:3] = np.clip((np.array(goal) - observation["agent_pos"][:3]) / 0.02, -1, 1)
        action[6] = -1
        observation = sim.step(action)
        if sim.task_completed("turn_on_led"):
            return observation, step
    return observation, None


@pytest.mark.slow
@needs_calvin_env
def test_reset_to_a_chain_is_reproducible_and_calvin_shaped(sim):
    initial_state = initial_states()[37]  # every official chain starts from one of these 192
    first = sim.reset_to(initial_state)
    assert first["pixels"]["rgb_static"].shape == (200, 200, 3)
    assert first["pixels"]["rgb_gripper"].shape == (84, 84, 3)
    assert first["pixels"]["rgb_static"].dtype == np.uint8 and first["pixels"]["rgb_static"].std() > 10
    assert first["agent_pos"].shape == (15,) and first["agent_pos"][14] == 1.0  # gripper command: open
    robot_obs, scene_obs = initial_scene_state(initial_state)
    np.testing.assert_allclose(first["agent_pos"][7:14], robot_obs[7:14], atol=1e-3)  # arm joints
    np.testing.assert_allclose(sim.env.get_obs()["scene_obs"], scene_obs, atol=5e-3)  # doors, lights, blocks

    for _ in range(5):  # disturb the scene: arm down, gripper closed
        sim.step(np.array([0.5, 0.5, -1, 0, 0, 0, -1]))
    second = sim.reset_to(initial_state)
    for camera in ("rgb_static", "rgb_gripper"):
        np.testing.assert_array_equal(first["pixels"][camera], second["pixels"][camera])
    np.testing.assert_array_equal(first["agent_pos"], second["agent_pos"])


@pytest.mark.slow
@needs_calvin_env
def test_relative_actions_move_the_end_effector_and_the_gripper(sim):
    start = sim.reset_to(LED_OFF)["agent_pos"]
    obs = start
    for _ in range(5):
        obs = sim.step(np.array([1.0, 0, 0, 0, 0, 0, 1]))  # +x at full scale: 2 cm per step
    moved = obs["agent_pos"][:3] - start[:3]
    assert 0.04 < moved[0] < 0.11 and abs(moved[1]) < 0.02 and abs(moved[2]) < 0.02
    for _ in range(10):
        obs = sim.step(np.array([0, 0, 0, 0, 0, 0, -1]))  # -1 closes the gripper
    assert obs["agent_pos"][14] == -1 and obs["agent_pos"][6] < start[6] - 0.03


@pytest.mark.slow
@needs_calvin_env
def test_task_oracle_sees_a_scripted_button_press_and_nothing_when_still(sim):
    obs = sim.reset_to(LED_OFF)
    sim.begin_subtask()
    for _ in range(20):
        obs = sim.step(np.array([0, 0, 0, 0, 0, 0, 1.0]))
    assert sim.completed_tasks() == set()  # none of the 34 tasks

    sim.begin_subtask()
    _, pressed_at = press_button(sim, obs, steps=45)
    assert pressed_at is not None and pressed_at >= 25  # only once the fingers went down
    assert sim.completed_tasks() == {"turn_on_led"}


class ButtonPresser:
    """A scripted ChainPolicy: presses the button whatever the instruction."""

    def __init__(self):
        self.resets, self.instructions, self.step = 0, [], 0

    def reset(self):
        self.resets, self.step = self.resets + 1, 0

    def __call__(self, observation, instruction):
        self.instructions.append(instruction)
        goal = (*BUTTON_XY, 0.53 if self.step < 25 else 0.43)
        self.step += 1
        action = np.zeros(7)
        action[:3] = np.clip((np.array(goal) - observation["agent_pos"][:3]) / 0.02, -1, 1)
        action[6] = -1
        return action


@pytest.mark.slow
@needs_calvin_env
def test_chain_moves_on_after_a_real_success_and_stops_at_the_first_failure(sim):
    policy = ButtonPresser()
    tasks = ("turn_on_led", "open_drawer", "move_slider_left", "lift_red_block_table", "rotate_red_block_left")
    result = run_chain(sim, policy, LED_OFF, tasks, max_steps=45)
    assert result.completed == 1 and len(result.steps) == 2 and result.steps[1] == 45
    assert policy.resets == 2  # once per instruction
    assert policy.instructions[0] == "press the button to turn on the led light"
    assert policy.instructions[-1] == INSTRUCTIONS["open_drawer"]


@pytest.mark.slow
@needs_calvin_env
def test_real_observations_reach_a_roboalign_checkpoint_and_its_actions_move_the_arm(calvin_checkpoint, sim):
    from lerobot_roboalign.calvin.env import CalvinEnv
    from lerobot_roboalign.calvin.evaluate import CalvinEvalConfig, load_policy

    policy = load_policy(CalvinEvalConfig(policy_path=str(calvin_checkpoint), rename_map=RENAME), CalvinEnv())
    obs = start = sim.reset_to(LED_OFF)
    policy.reset()
    for _ in range(4):
        action = policy(obs, INSTRUCTIONS["turn_on_led"])
        assert action.shape == (7,) and np.isfinite(action).all()
        obs = sim.step(action)
    assert np.abs(obs["agent_pos"][7:14] - start["agent_pos"][7:14]).max() > 1e-4  # the joints moved


@pytest.mark.slow
@needs_calvin_env
def test_roboalign_calvin_eval_runs_two_chains_and_writes_the_table(calvin_checkpoint, tmp_path):
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "lerobot_roboalign.cli", "calvin", "eval", f"--policy_path={calvin_checkpoint}",
           "--num_chains=2", "--max_steps_per_subtask=8", f"--output_dir={out}",
           f"--rename_map={json.dumps(RENAME)}"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    chains = sample_chains(2)
    assert [c["tasks"] for c in results["chains"]] == [list(tasks) for _, tasks in chains]
    for chain in results["chains"]:  # an untrained head: the first instruction fails after the cap
        assert chain["completed"] == len(chain["steps"]) - 1 and chain["steps"][-1] == 8
    assert results["num_chains"] == 2 and "| this run (2 chains) |" in (out / "results.md").read_text()
    assert len((out / "chains.jsonl").read_text().splitlines()) == 2 and (out / "results.png").is_file()


@pytest.mark.slow
@needs_calvin_env
def test_lerobot_eval_runs_one_episode_per_instruction(calvin_checkpoint, tmp_path):
    from lerobot_roboalign.runner import run_lerobot

    out = tmp_path / "lerobot_eval"
    run_lerobot(
        "lerobot-eval",
        [f"--policy.path={calvin_checkpoint}", "--policy.device=cpu", "--env.type=calvin", "--env.num_chains=2",
         "--env.max_steps_per_subtask=6", "--eval.n_episodes=2", "--eval.batch_size=1",
         f"--rename_map={json.dumps(RENAME)}", f"--output_dir={out}"],  # fmt: skip
        cwd=tmp_path,
    )
    info = json.loads((out / "eval_info.json").read_text())
    metrics = info["per_task"][0]["metrics"]
    # Each episode is one instruction: the untrained head fails it within the cap, the next episode
    # starts the next chain (LeRobot resets the policy at every episode).
    assert info["overall"]["n_episodes"] == 2 and metrics["successes"] == [False, False]
