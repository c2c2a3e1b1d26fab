"""LIBERO is configured offline from the PyPI asset packages: no stdin prompt, no download."""

from pathlib import Path

import yaml

from lerobot_roboalign.libero_setup import ASSET_SUBDIRS, LiberoSetupConfig, missing_asset_parts, setup_libero


def test_setup_writes_a_config_libero_resolves_offline(tmp_path):
    assert missing_asset_parts() == [], "run `python -m lerobot_roboalign.libero_setup` (make setup) first"
    (tmp_path / "config.yaml").write_text(
        yaml.safe_dump({"datasets": "/data/libero", "bddl_files": "/stale"})
    )
    # verify=True imports LIBERO in a fresh interpreter with stdin closed and fails on any prompt/download.
    path = setup_libero(LiberoSetupConfig(install_missing=False, config_dir=str(tmp_path)))
    config = yaml.safe_load(path.read_text())
    assert config["datasets"] == "/data/libero"  # a user's choice is kept
    assert config["bddl_files"].endswith("bddl_files") and config["bddl_files"] != "/stale"
    for key in ("bddl_files", "init_states", "assets"):
        assert Path(config[key]).is_dir(), key
    assert all((Path(config["assets"]) / sub).is_dir() for sub in ASSET_SUBDIRS)
