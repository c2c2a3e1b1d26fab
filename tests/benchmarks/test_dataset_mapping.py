"""A wrong feature mapping is a clear error before training starts, naming the key and the fix."""

import pytest
from lerobot.configs import FeatureType, PolicyFeature

from lerobot_roboalign import RoboAlignConfig
from lerobot_roboalign.dataset_mapping import check_dataset_features

LIBERO_POLICY_FEATURES = {
    "observation.images.image": PolicyFeature(type=FeatureType.VISUAL, shape=(3, 256, 256)),
    "observation.images.image2": PolicyFeature(type=FeatureType.VISUAL, shape=(3, 256, 256)),
    "observation.state": PolicyFeature(type=FeatureType.STATE, shape=(8,)),
}


def video(h: int = 200, w: int = 200) -> dict:
    return {"dtype": "video", "shape": (h, w, 3), "names": ["height", "width", "channels"]}


def vector(dim: int) -> dict:
    return {"dtype": "float32", "shape": (dim,), "names": None}


# Keys of a CALVIN dataset in LeRobot format: cameras and state under other names.
CALVIN_DATASET = {
    "observation.images.rgb_static": video(),
    "observation.images.rgb_gripper": video(84, 84),
    "observation.state": vector(8),
    "action": vector(7),
    "timestamp": vector(1),
}
CALVIN_TO_LIBERO = {
    "observation.images.rgb_static": "observation.images.image",
    "observation.images.rgb_gripper": "observation.images.image2",
}


def libero_policy(action_dim: int = 7) -> RoboAlignConfig:
    config = RoboAlignConfig(vlm_model_name="unused", device="cpu")
    config.input_features = dict(LIBERO_POLICY_FEATURES)
    config.output_features = {"action": PolicyFeature(type=FeatureType.ACTION, shape=(action_dim,))}
    return config


def test_rename_map_makes_a_dataset_fit():
    check_dataset_features(libero_policy(), CALVIN_DATASET, CALVIN_TO_LIBERO)


def test_missing_camera_names_the_camera_and_the_rename_fix():
    with pytest.raises(ValueError, match=r"camera 'observation.images.image'.*--rename_map") as err:
        check_dataset_features(libero_policy(), CALVIN_DATASET, {})
    assert "observation.images.rgb_static" in str(err.value)


def test_action_dimension_mismatch():
    with pytest.raises(ValueError, match=r"'action' has dimension 7 in the dataset but the policy expects 6"):
        check_dataset_features(libero_policy(action_dim=6), CALVIN_DATASET, CALVIN_TO_LIBERO)


def test_state_dimension_mismatch():
    dataset = {**CALVIN_DATASET, "observation.state": vector(15)}
    with pytest.raises(ValueError, match=r"'observation.state' has dimension 15 .* expects 8"):
        check_dataset_features(libero_policy(), dataset, CALVIN_TO_LIBERO)


def test_rename_map_key_absent_from_dataset():
    with pytest.raises(ValueError, match=r"renames \['observation.images.top'\]"):
        check_dataset_features(
            libero_policy(), CALVIN_DATASET, {"observation.images.top": "observation.images.image"}
        )


def test_fresh_policy_needs_a_camera_and_an_action():
    fresh = RoboAlignConfig(vlm_model_name="unused", device="cpu")
    check_dataset_features(fresh, CALVIN_DATASET, {})
    with pytest.raises(ValueError, match="no camera"):
        check_dataset_features(fresh, {"observation.state": vector(8), "action": vector(7)}, {})
    with pytest.raises(ValueError, match="no 'action' feature"):
        check_dataset_features(fresh, {"observation.images.rgb_static": video()}, {})


@pytest.mark.parametrize(
    "args",
    [
        ['--rename_map={"observation.images.rgb_static": "observation.images.image"}'],
        ["--rename_map", "{observation.images.rgb_static: observation.images.image}"],
    ],
)
def test_the_policy_reads_lerobot_trains_rename_map_from_the_command_line(args):
    from lerobot_roboalign.dataset_mapping import cli_rename_map

    assert cli_rename_map(["--policy.path=ckpt", *args, "--steps=2"]) == {
        "observation.images.rgb_static": "observation.images.image"
    }
    assert cli_rename_map(["--policy.path=ckpt"]) == {}


def test_the_rename_map_of_a_config_path_train_config_is_used(tmp_path):
    import json

    from lerobot_roboalign.dataset_mapping import cli_rename_map

    config = tmp_path / "train_config.json"
    config.write_text(json.dumps({"rename_map": CALVIN_TO_LIBERO, "steps": 2}))
    assert cli_rename_map([f"--config_path={config}"]) == CALVIN_TO_LIBERO
    assert cli_rename_map([f"--config_path={config}", "--rename_map={}"]) == {}  # the command line wins
