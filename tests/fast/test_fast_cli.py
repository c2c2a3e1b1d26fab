"""``roboalign tokenizer fit`` / ``report`` on a synthetic LeRobotDataset, through the CLI dispatcher."""

import csv
from pathlib import Path

import numpy as np
import pytest

from lerobot_roboalign.cli import main
from lerobot_roboalign.fast import FastTokenizer, dataset_action_chunks


def test_fit_writes_a_loadable_tokenizer(synthetic_dataset, tmp_path):
    root, repo_id = synthetic_dataset
    main(
        [
            "tokenizer",
            "fit",
            f"--dataset.repo_ids=[{repo_id}]",
            f"--dataset.roots=[{root}]",
            "--chunk_size=8",
            "--vocab_size=256",
            "--scale=20",
            f"--output_dir={tmp_path / 'fast'}",
        ]
    )
    tokenizer = FastTokenizer.from_pretrained(tmp_path / "fast")
    assert (tokenizer.chunk_size, tokenizer.scale, tokenizer.vocab_size) == (8, 20.0, 256)
    chunks = dataset_action_chunks(repo_id, root, chunk_size=8)
    assert tokenizer.decode(tokenizer.encode(chunks))[1].all()


def test_the_old_dataset_root_flag_still_works_with_a_deprecation(synthetic_dataset, caplog):
    from lerobot_roboalign.fast_cli import DatasetSource

    root, repo_id = synthetic_dataset
    assert DatasetSource([repo_id], root=str(root)).dataset_roots() == [root]
    assert "--dataset.root is deprecated" in caplog.text
    several = DatasetSource(["a/x", "b/y"], root="/data").dataset_roots()
    assert several == [Path("/data/a/x"), Path("/data/b/y")]  # its old meaning: a folder of datasets
    with pytest.raises(ValueError, match="keep --dataset.roots only"):
        DatasetSource([repo_id], roots=[str(root)], root=str(root))
    with pytest.raises(ValueError, match="one root per repo id"):
        DatasetSource([repo_id, "b/y"], roots=[str(root)])


def test_fit_without_output_dir_says_what_to_pass(synthetic_dataset):
    root, repo_id = synthetic_dataset
    with pytest.raises(ValueError, match="--output_dir"):
        main(["tokenizer", "fit", f"--dataset.repo_ids=[{repo_id}]", f"--dataset.root={root}"])


def test_report_tables_and_plots(synthetic_dataset, tmp_path):
    root, repo_id = synthetic_dataset
    main(
        [
            "tokenizer",
            "report",
            f"--dataset.repo_ids=[{repo_id}]",
            f"--dataset.root={root}",
            "--chunk_size=8",
            "--vocab_size=512",
            "--scales=[2,50]",
            f"--output_dir={tmp_path}",
        ]
    )
    assert {"report.csv", "report.md", "trajectories.png", "tradeoff.png"} <= {
        p.name for p in tmp_path.iterdir()
    }
    with open(tmp_path / "report.csv") as f:
        rows = list(csv.DictReader(f))
    by_scale = {scale: [r for r in rows if float(r["scale"]) == scale] for scale in (2.0, 50.0)}
    assert len(by_scale[2.0]) == len(by_scale[50.0]) == 6  # one row per action dimension
    tokens = {s: float(r[0]["tokens_mean"]) for s, r in by_scale.items()}
    error = {s: np.mean([float(x["error_mean"]) for x in r]) for s, r in by_scale.items()}
    assert tokens[50.0] > tokens[2.0] and error[50.0] < error[2.0]
    assert "| 50 |" in (tmp_path / "report.md").read_text()
