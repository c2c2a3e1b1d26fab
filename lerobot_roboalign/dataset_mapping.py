"""Check, before training starts, that a dataset (after a rename map) feeds every input the policy expects.

Benchmarks name the same things differently (LIBERO's ``observation.images.image`` /
``image2``, CALVIN's ``rgb_static`` / ``rgb_gripper``); a checkpoint or a paper config fixes the
names and the action dimension. A mismatch would otherwise surface as a ``KeyError`` deep in
the first forward pass, or, worse, as a head that silently trains on the wrong action size.
"""

import json
from pathlib import Path
from typing import Any

import yaml
from lerobot.configs import FeatureType, PolicyFeature, parser
from lerobot.utils.constants import ACTION, OBS_STATE
from lerobot.utils.feature_utils import dataset_to_policy_features


def as_policy_features(features: dict[str, Any]) -> dict[str, PolicyFeature]:
    """Accept LeRobotDataset ``meta.features`` (dtype/shape dicts) or ready ``PolicyFeature``s."""
    if all(isinstance(ft, PolicyFeature) for ft in features.values()):
        return dict(features)
    return dataset_to_policy_features(features)


def rename_features(
    features: dict[str, PolicyFeature], rename_map: dict[str, str]
) -> dict[str, PolicyFeature]:
    """Apply ``rename_map`` (dataset key -> policy key), as LeRobot's rename processor does to batches."""
    unknown = sorted(set(rename_map) - set(features))
    if unknown:
        raise ValueError(
            f"--rename_map renames {unknown}, which the dataset does not have (its features: "
            f"{sorted(features)}). Fix: use the dataset's key names on the left of the rename map."
        )
    return {rename_map.get(key, key): ft for key, ft in features.items()}


def _rename_hint(missing: str, available: list[str], source: str) -> str:
    if not available:
        return f"record or choose a {source} that has this input"
    return (f"map one of the {source}'s cameras to it ({source} key -> policy key), e.g. "
            f'--rename_map=\'{{"{available[0]}": "{missing}"}}\'')  # fmt: skip


def _check_cameras(
    expected: list[str], provided: dict[str, PolicyFeature], rename_map: dict[str, str], source: str
) -> None:
    cameras = sorted(k for k, ft in provided.items() if ft.type is FeatureType.VISUAL)
    original = {new: old for old, new in rename_map.items()}  # the hint names the source's own key
    unused = [original.get(c, c) for c in cameras if c not in expected]
    for camera in expected:
        if camera not in provided:
            raise ValueError(
                f"The policy expects camera '{camera}' but the {source} provides {cameras} after renaming. "
                f"Fix: {_rename_hint(camera, unused, source)}."
            )


def _check_dim(
    key: str, expected: PolicyFeature | None, provided: dict[str, PolicyFeature], fix: str
) -> None:
    if expected is None:
        return
    if key not in provided:
        raise ValueError(f"The policy expects '{key}' but the dataset has no such feature. Fix: {fix}.")
    want, got = expected.shape[-1], provided[key].shape[-1]
    if want != got:
        raise ValueError(
            f"'{key}' has dimension {got} in the dataset but the policy expects {want}. Fix: {fix}."
        )


def check_dataset_features(
    policy_config, dataset_features: dict[str, Any], rename_map: dict[str, str], source: str = "dataset"
) -> None:
    """Raise ``ValueError`` naming the key and the fix if the dataset (or ``source``) cannot feed ``policy_config``.

    ``policy_config`` is a ``PreTrainedConfig``: its ``image_features``, ``robot_state_feature``
    and ``action_feature`` are what it expects (set by a checkpoint or a config file). A fresh
    config with no features yet only needs a camera and an action from the dataset.
    """
    provided = rename_features(as_policy_features(dataset_features), rename_map or {})
    if not any(ft.type is FeatureType.VISUAL for ft in provided.values()):
        raise ValueError(
            f"The dataset has no camera (no 'observation.images.*' feature; it has {sorted(provided)}). "
            "Fix: choose a dataset with at least one camera."
        )
    _check_cameras(list(policy_config.image_features), provided, rename_map or {}, source)
    _check_dim(
        OBS_STATE,
        policy_config.robot_state_feature,
        provided,
        "map the dataset's proprioceptive state to 'observation.state' with --rename_map, or train a "
        "new policy on this dataset instead of loading one made for another robot",
    )
    if ACTION not in provided:
        raise ValueError(
            f"The dataset has no '{ACTION}' feature (it has {sorted(provided)}). "
            "Fix: choose a dataset recorded with actions."
        )
    _check_dim(
        ACTION,
        policy_config.action_feature,
        provided,
        "the action head is sized for another robot: train a new head on this dataset (no "
        "--policy.path), or use a dataset with the same action space",
    )


def missing_offline_dataset(repo_id: str, root: str | Path | None, root_flag: str = "--dataset.root=DIR") -> str | None:
    """The error for a Hub dataset id that is not on this machine while the Hub is offline (else ``None``).

    LeRobot (through huggingface_hub) stops there with ``OfflineModeIsEnabled`` and a hint to go online only.
    """
    from huggingface_hub import constants
    from lerobot.utils.constants import HF_LEROBOT_HOME

    local = HF_LEROBOT_HOME / repo_id
    if root is not None or not constants.HF_HUB_OFFLINE or (local / "meta" / "info.json").is_file():
        return None
    return (
        f"Dataset {repo_id!r} is not on this machine (not in {local}) and the Hub is offline (HF_HUB_OFFLINE=1). "
        f"Fix: pass the folder that holds it with {root_flag}, or unset HF_HUB_OFFLINE to download it."
    )


def check_cli_offline_dataset(argv: list[str]) -> None:
    """For ``lerobot-train`` (LeRobot imports this plugin before it parses): refuse an offline Hub dataset id."""
    if not argv or not Path(argv[0]).name.startswith("lerobot-train"):
        return
    repo_id, root = parser.parse_arg("dataset.repo_id", argv[1:]), parser.parse_arg("dataset.root", argv[1:])
    config_path = parser.parse_arg("config_path", argv[1:])
    if config_path and Path(config_path).suffix == ".json" and Path(config_path).is_file():
        dataset = json.loads(Path(config_path).read_text()).get("dataset") or {}
        repo_id, root = repo_id or dataset.get("repo_id"), root or dataset.get("root")
    if repo_id and (message := missing_offline_dataset(repo_id, root)):
        raise SystemExit(f"lerobot-train: {message}")


def cli_rename_map(args: list[str] | None = None) -> dict[str, str]:
    """The ``--rename_map`` of the running LeRobot command (``{}`` if none).

    lerobot-train hands the rename map to the processors but not to the policy, so it is re-read from the
    command line (or the ``--config_path`` train config), as LeRobot itself re-reads ``--policy.path``.
    """
    raw = parser.parse_arg("rename_map", args)
    if raw is not None:
        return yaml.safe_load(raw) or {}  # the flow-style/JSON dict draccus accepts
    config_path = parser.parse_arg("config_path", args)
    if config_path and Path(config_path).is_file() and Path(config_path).suffix == ".json":
        return json.loads(Path(config_path).read_text()).get("rename_map") or {}
    return {}
