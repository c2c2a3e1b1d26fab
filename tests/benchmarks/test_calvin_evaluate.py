"""``roboalign calvin eval`` end to end on a real roboalign checkpoint, with a scripted stand-in simulator.

calvin_env is not installable here, so the scene is a stand-in that produces CALVIN-shaped
observations (200x200 static and 84x84 gripper cameras, 15-D robot state) and completes every
task after two steps; the policy, its processors, the env->policy rename map and the journal
that lets an interrupted evaluation resume are the real ones.
"""

import importlib.util
import json

import numpy as np
import pytest

from lerobot_roboalign.calvin.evaluate import CalvinEvalConfig, JOURNAL, load_policy, main, run_evaluation
from lerobot_roboalign.calvin.env import CalvinEnv

RENAME = {"observation.images.rgb_static": "observation.images.image",
          "observation.images.rgb_gripper": "observation.images.image2"}


class CalvinShapedEnv:
    def __init__(self):
        self.rng = np.random.default_rng(0)
        self.actions = []

    def _obs(self):
        return {"pixels": {"rgb_static": self.rng.integers(0, 255, (200, 200, 3), dtype=np.uint8),
                           "rgb_gripper": self.rng.integers(0, 255, (84, 84, 3), dtype=np.uint8)},
                "agent_pos": self.rng.normal(size=15).astype(np.float32)}

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


@pytest.fixture(scope="module")
def calvin_checkpoint(tmp_path_factory, tiny_qwen25_backbone, synthetic_dataset_factory):
    """An untrained roboalign checkpoint for a CALVIN-like dataset, saved as lerobot-train saves it."""
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata
    from lerobot.policies.factory import make_policy, make_pre_post_processors

    from lerobot_roboalign import RoboAlignConfig

    root, repo_id = synthetic_dataset_factory(cameras=("image", "image2"), image_hw=(32, 32), state_dim=15,
                                              action_dim=7, num_episodes=2, episode_length=8)
    meta = LeRobotDatasetMetadata(repo_id, root=root)
    cfg = RoboAlignConfig(vlm_model_name=str(tiny_qwen25_backbone), vlm_layer=2, head_hidden_size=64,
                          head_num_layers=2, head_num_heads=4, image_resolution=(56, 56), device="cpu")
    policy = make_policy(cfg, ds_meta=meta)
    preprocessor, postprocessor = make_pre_post_processors(cfg, dataset_stats=meta.stats)
    out = tmp_path_factory.mktemp("calvin_ckpt")
    for part in (policy, preprocessor, postprocessor):
        part.save_pretrained(out)
    return out


@pytest.mark.slow
def test_calvin_eval_runs_a_real_policy_and_resumes(calvin_checkpoint, tmp_path):
    cfg = CalvinEvalConfig(policy_path=str(calvin_checkpoint), num_chains=3, max_steps_per_subtask=4,
                           output_dir=str(tmp_path), rename_map=RENAME)
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


def test_wrong_mapping_is_caught_before_the_evaluation(calvin_checkpoint, tmp_path):
    cfg = CalvinEvalConfig(policy_path=str(calvin_checkpoint), output_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"camera 'observation.images.image'.*--rename_map"):
        load_policy(cfg, CalvinEnv())


@pytest.mark.skipif(importlib.util.find_spec("calvin_env") is not None, reason="CALVIN's simulator is installed")
def test_missing_simulator_names_the_install_fix(calvin_checkpoint, tmp_path):
    with pytest.raises(ImportError, match="pip install -e calvin_env"):
        main([f"--policy_path={calvin_checkpoint}", f"--output_dir={tmp_path}"])
