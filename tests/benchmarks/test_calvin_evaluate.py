"""``roboalign calvin eval`` end to end on a real roboalign checkpoint, with a scripted stand-in simulator.

The scene is a stand-in (fast; the real simulator runs in test_calvin_sim.py) that produces CALVIN-shaped
observations (200x200 static and 84x84 gripper cameras, 15-D robot state) and completes every
task after two steps; the policy (trained one step by lerobot-train), its processors, the
env->policy rename map and the journal that lets an interrupted evaluation resume are real.
"""

import importlib.util
import json

import numpy as np
import pytest

from lerobot_roboalign.calvin.env import CalvinEnv
from lerobot_roboalign.calvin.evaluate import JOURNAL, CalvinEvalConfig, load_policy, main, run_evaluation

RENAME = {
    "observation.images.rgb_static": "observation.images.image",
    "observation.images.rgb_gripper": "observation.images.image2",
}


class CalvinShapedEnv:
    def __init__(self):
        self.rng = np.random.default_rng(0)
        self.actions = []

    def _obs(self):
        return {
            "pixels": {
                "rgb_static": self.rng.integers(0, 255, (200, 200, 3), dtype=np.uint8),
                "rgb_gripper": self.rng.integers(0, 255, (84, 84, 3), dtype=np.uint8),
            },
            "agent_pos": self.rng.normal(size=15).astype(np.float32),
        }

    def reset_to(self, initial_state):
        return self._obs()

    def begin_subtask(self):
        self.steps = 0

    def step(self, action):
        self.actions.append(action)
        self.steps += 1
        return self._obs()

    def task_completed(self, task):
        return self.steps >= 2


@pytest.mark.slow
def test_calvin_eval_runs_a_real_policy_and_resumes(calvin_checkpoint, tmp_path):
    cfg = CalvinEvalConfig(
        policy_path=str(calvin_checkpoint),
        num_chains=3,
        max_steps_per_subtask=4,
        output_dir=str(tmp_path),
        rename_map=RENAME,
    )
    policy = load_policy(cfg, CalvinEnv())
    env = CalvinShapedEnv()
    summary = run_evaluation(env, policy, cfg)
    assert summary["average_length"] == 5.0 and summary["num_chains"] == 3
    assert len(env.actions) == 3 * 5 * 2
    assert all(a.shape == (7,) and np.isfinite(a).all() for a in env.actions)

    # Interrupted after one chain: the rerun evaluates only the two missing ones.
    journal = tmp_path / JOURNAL
    journal.write_text(journal.read_text().splitlines()[0] + "\n")
    env = CalvinShapedEnv()
    assert run_evaluation(env, policy, cfg)["num_chains"] == 3
    assert len(env.actions) == 2 * 5 * 2
    assert len(json.loads((tmp_path / "results.json").read_text())["chains"]) == 3


@pytest.mark.slow
def test_wrong_mapping_is_caught_before_the_evaluation(calvin_checkpoint, tmp_path):
    cfg = CalvinEvalConfig(policy_path=str(calvin_checkpoint), output_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"camera 'observation.images.image'.*--rename_map"):
        load_policy(cfg, CalvinEnv())


@pytest.mark.skipif(
    importlib.util.find_spec("calvin_env") is not None, reason="CALVIN's simulator is installed"
)
def test_missing_simulator_names_the_install_fix(calvin_checkpoint, tmp_path):
    with pytest.raises(ImportError, match="calvin_env"):
        main([f"--policy_path={calvin_checkpoint}", f"--output_dir={tmp_path}"])


def test_journal_of_another_chain_list_is_refused():
    from lerobot_roboalign.calvin.evaluate import remaining_chains
    from lerobot_roboalign.calvin.protocol import ChainResult, sample_chains

    chains = sample_chains(4)
    done = [ChainResult(chains[0][0], chains[0][1], completed=2, steps=[2, 2, 4])]
    assert remaining_chains(chains, done) == chains[1:]
    stranger = [ChainResult(chains[1][0], chains[1][1], completed=0, steps=[4])]
    with pytest.raises(ValueError, match="different chain list"):
        remaining_chains(chains, stranger)
