"""The shipped examples/calvin/rename_map.json feeds a checkpoint trained on the CALVIN LeRobot data from the
simulator's cameras, and a map that does not is refused naming the simulator and the key to put on the left."""

from pathlib import Path

import pytest
from lerobot.configs import FeatureType, PolicyFeature
from lerobot.envs.utils import env_to_policy_features

from lerobot_roboalign import RoboAlignConfig
from lerobot_roboalign.calvin.env import CalvinEnv
from lerobot_roboalign.calvin.evaluate import CalvinEvalConfig
from lerobot_roboalign.dataset_mapping import check_dataset_features

SHIPPED_MAP = Path(__file__).resolve().parents[2] / "examples" / "calvin" / "rename_map.json"


def calvin_checkpoint_config(cameras: tuple[str, str]) -> RoboAlignConfig:
    """The features lerobot-train saves for a policy trained on CALVIN data (two cameras, 15-D state, 7-D action)."""
    config = RoboAlignConfig(vlm_model_name="unused", device="cpu")
    config.input_features = {
        cameras[0]: PolicyFeature(type=FeatureType.VISUAL, shape=(3, 200, 200)),
        cameras[1]: PolicyFeature(type=FeatureType.VISUAL, shape=(3, 84, 84)),
        "observation.state": PolicyFeature(type=FeatureType.STATE, shape=(15,)),
    }
    config.output_features = {"action": PolicyFeature(type=FeatureType.ACTION, shape=(7,))}
    return config


def test_the_shipped_map_feeds_a_checkpoint_trained_on_the_calvin_data():
    rename_map = CalvinEvalConfig(rename_map_file=str(SHIPPED_MAP)).resolved_rename_map()
    assert all(target.startswith("observation.images.") for target in rename_map.values())
    checkpoint = calvin_checkpoint_config(tuple(rename_map.values()))
    check_dataset_features(checkpoint, env_to_policy_features(CalvinEnv()), rename_map, source="simulator")


def test_a_map_to_names_the_checkpoint_lacks_names_the_simulator_and_its_own_key():
    rename_map = CalvinEvalConfig(rename_map_file=str(SHIPPED_MAP)).resolved_rename_map()
    checkpoint = calvin_checkpoint_config(("observation.images.top", "observation.images.wrist"))
    with pytest.raises(ValueError) as error:
        check_dataset_features(
            checkpoint, env_to_policy_features(CalvinEnv()), rename_map, source="simulator"
        )
    message = str(error.value)
    assert "the simulator provides" in message and "dataset" not in message
    # The fix puts the simulator's key on the left (not the map's current target) and the checkpoint's on the right.
    assert '{"observation.images.rgb_static": "observation.images.top"}' in message
