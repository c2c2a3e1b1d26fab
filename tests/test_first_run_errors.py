"""First-run mistakes stop with the cause and the fix, not a library's traceback (issue 31 item 5).

A missing ``--robot.type`` and a new ``--robot.id`` at rollout are caught by ``roboalign rollout check``
(tests/robots/test_preflight.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lerobot_roboalign.calibration import main_check

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def offline_empty_cache(tmp_path, monkeypatch) -> Path:
    """The Hub offline and LeRobot's dataset cache empty, in this process and in the ones it starts."""
    import huggingface_hub.constants
    import lerobot.utils.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(lerobot.utils.constants, "HF_LEROBOT_HOME", tmp_path / "lerobot")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_LEROBOT_HOME", str(tmp_path / "lerobot"))
    return tmp_path


def test_lerobot_train_on_an_offline_hub_dataset_id_points_at_dataset_root(offline_empty_cache):
    run = subprocess.run(
        [str(Path(sys.executable).parent / "lerobot-train"), "--policy.type=roboalign", "--dataset.repo_id=me/absent"],
        capture_output=True, text=True, timeout=600, cwd=offline_empty_cache, env=dict(os.environ), check=False,
    )  # fmt: skip
    assert run.returncode != 0
    assert "'me/absent' is not on this machine" in run.stderr and "--dataset.root=DIR" in run.stderr
    assert "OfflineModeIsEnabled" not in run.stderr


def test_lerobot_train_offline_with_the_dataset_in_the_cache_or_a_root_is_not_refused(offline_empty_cache):
    from lerobot_roboalign.dataset_mapping import check_cli_offline_dataset

    check_cli_offline_dataset(["lerobot-train", "--dataset.repo_id=me/absent", "--dataset.root=data/here"])
    (offline_empty_cache / "lerobot" / "me" / "cached" / "meta").mkdir(parents=True)
    (offline_empty_cache / "lerobot" / "me" / "cached" / "meta" / "info.json").write_text("{}")
    check_cli_offline_dataset(["lerobot-train", "--dataset.repo_id=me/cached"])
    check_cli_offline_dataset(["lerobot-record", "--dataset.repo_id=me/new_recording"])  # creates it
    with pytest.raises(SystemExit, match="--dataset.root=DIR"):
        check_cli_offline_dataset(["lerobot-train", f"--config_path={ROOT / 'examples/paper/libero.json'}"])


def test_tokenizer_fit_on_an_offline_hub_dataset_id_points_at_dataset_roots(offline_empty_cache):
    from lerobot_roboalign.fast import dataset_action_chunks

    with pytest.raises(
        FileNotFoundError, match=r"'me/absent' is not on this machine .* --dataset\.roots='\[DIR\]'"
    ):
        dataset_action_chunks("me/absent", None, chunk_size=16)


def test_calibration_check_names_the_type_of_another_policys_checkpoint(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"type": "act", "chunk_size": 100}))
    with pytest.raises(SystemExit) as stop:
        main_check([str(ROOT / "calibration" / "so101_follower.json"), "--robot.type=so101_follower",
                    f"--checkpoint={tmp_path}"])  # fmt: skip
    message = str(stop.value)
    assert "is a 'act' policy, not a RoboAlign one" in message and "--policy.type=roboalign" in message
    assert "not found" not in message


def test_alignment_data_on_an_offline_hub_dataset_id_points_at_dataset_roots(offline_empty_cache):
    from lerobot_roboalign.align.data import AlignDataConfig, open_dataset

    with pytest.raises(
        FileNotFoundError, match=r"'me/absent' is not on this machine .* --dataset\.roots='\[DIR\]'"
    ):
        open_dataset("me/absent", None, AlignDataConfig(repo_ids=["me/absent"]), None)
