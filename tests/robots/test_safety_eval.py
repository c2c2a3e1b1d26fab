"""Issue 11 item 5: under ``lerobot-eval`` (which resets only the policy between episodes and reuses one
postprocessor for every episode and task) the safety step's rate limit does not outlive an episode."""

import sys

import pytest
import torch

pytest.importorskip("lerobot_env_so101")
pytestmark = pytest.mark.slow
MAX_DELTA = 0.05  # so101_lang actions are [dx, dy, dz, grasp] in [-1, 1]: a tight limit that every step meets


def _so101_lang_checkpoint(directory, backbone) -> None:
    """An untrained roboalign policy for so101_lang's features, saved with its processors like lerobot-train does."""
    from lerobot.configs import FeatureType
    from lerobot.envs.utils import env_to_policy_features

    from lerobot_roboalign.configuration_roboalign import RoboAlignConfig
    from lerobot_roboalign.envs.configuration_so101_lang import SO101LangEnvConfig
    from lerobot_roboalign.modeling_roboalign import RoboAlignPolicy
    from lerobot_roboalign.processor_roboalign import make_roboalign_pre_post_processors

    features = env_to_policy_features(SO101LangEnvConfig(observation_height=32, observation_width=32))
    config = RoboAlignConfig(
        vlm_model_name=str(backbone), vlm_layer=2, head_hidden_size=64, head_num_layers=2, head_num_heads=4,
        image_resolution=[112, 112], device="cpu", push_to_hub=False, chunk_size=4, n_action_steps=4,
        chunk_blend_steps=0, safety_max_delta=MAX_DELTA,
        input_features={k: f for k, f in features.items() if f.type is not FeatureType.ACTION},
        output_features={k: f for k, f in features.items() if f.type is FeatureType.ACTION},
    )  # fmt: skip
    stats = {
        "action": {"mean": torch.zeros(4), "std": torch.ones(4), "min": -torch.ones(4), "max": torch.ones(4)},
        "observation.state": {"mean": torch.zeros(14), "std": torch.ones(14)},
    }
    torch.manual_seed(0)
    RoboAlignPolicy(config).save_pretrained(directory)
    for pipeline in make_roboalign_pre_post_processors(config, dataset_stats=stats):
        pipeline.save_pretrained(directory)


def test_rate_limit_restarts_at_every_lerobot_eval_episode(tmp_path, tiny_qwen25_backbone, monkeypatch):
    from lerobot.scripts.lerobot_eval import main

    from lerobot_roboalign.modeling_roboalign import RoboAlignPolicy
    from lerobot_roboalign.safety import RoboAlignActionSafetyStep

    checkpoint = tmp_path / "pretrained_model"
    _so101_lang_checkpoint(checkpoint, tiny_qwen25_backbone)
    log: list = []  # ("reset",) or (requested, emitted) per control step, in call order
    step_action, policy_reset = RoboAlignActionSafetyStep.action, RoboAlignPolicy.reset

    def recorded_action(self, action):
        emitted = step_action(self, action)
        log.append((action.clone(), emitted.clone(), self.joint_min, self.joint_max))
        return emitted

    def recorded_reset(self):
        log.append(("reset",))
        return policy_reset(self)

    monkeypatch.setattr(RoboAlignActionSafetyStep, "action", recorded_action)
    monkeypatch.setattr(RoboAlignPolicy, "reset", recorded_reset)
    argv = [f"--policy.path={checkpoint}", "--env.type=so101_lang", "--env.task=reach_and_close,pick_and_place",
            "--env.observation_height=32", "--env.observation_width=32", "--env.episode_length=6",
            "--eval.n_episodes=2", "--eval.batch_size=1", "--policy.device=cpu", f"--output_dir={tmp_path / 'eval'}"]
    monkeypatch.setattr(sys, "argv", ["lerobot-eval", *argv])
    main()

    episodes, current = [], None
    for entry in log:
        if entry == ("reset",):
            current = []
            episodes.append(current)
        elif current is not None:
            current.append(entry)
    episodes = [e for e in episodes if e]
    assert len(episodes) == 4, "2 episodes x 2 tasks, each after a policy.reset()"
    for steps in episodes:
        requested, emitted, low, high = steps[0]
        # first action of an episode: clamped to the limits only (the state is not in action units here),
        # never rate-limited against the previous episode's last action
        assert torch.allclose(emitted, requested.clamp(torch.tensor(low), torch.tensor(high)))
        for (_, before, _, _), (_, after, _, _) in zip(steps, steps[1:]):
            assert (after - before).abs().max() <= MAX_DELTA + 1e-6
    last_of_first = episodes[0][-1][1]
    assert (episodes[1][0][1] - last_of_first).abs().max() > MAX_DELTA, "the policy asked for a jump between episodes"
