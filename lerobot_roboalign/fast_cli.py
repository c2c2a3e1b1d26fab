"""``roboalign tokenizer fit`` and ``roboalign tokenizer report``: FAST tokenizers from LeRobotDatasets.

    roboalign tokenizer fit --dataset.repo_ids='[user/ds]' --dataset.roots='[DIR]' --output_dir=OUT
    roboalign tokenizer report --dataset.repo_ids='[user/ds]' --dataset.roots='[DIR]' --output_dir=REPORT

``--dataset.repo_ids`` / ``--dataset.roots`` are named as in ``align reason|sft|grpo``; ``fit``'s output
directory is what ``align sft --model.fast_tokenizer=OUT`` takes.

``report`` shows the trade-off that ``scale`` sets: tokens per chunk against reconstruction error
per action dimension on held-out chunks, as CSV + markdown, with plots of a few trajectories.
"""

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path

import draccus
import numpy as np
from tqdm import tqdm

from .fast import FastTokenizer, dataset_action_chunks, fit_from_datasets


def _pyplot():
    """matplotlib (headless) only where a plot is drawn: `roboalign tokenizer fit --help` stays fast."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@dataclass
class DatasetSource:
    """One or more LeRobotDatasets with the same action space."""

    repo_ids: list[str] = field(default_factory=list)
    roots: list[str] | None = None  # local dataset roots, one per repo id (as the align commands take them)
    # Deprecated, use roots: the dataset's directory for one repo_id; for several, a folder with ROOT/<repo_id>.
    root: str | None = None

    def __post_init__(self) -> None:
        if self.root is not None:
            if self.roots is not None:
                raise ValueError("Got --dataset.root and --dataset.roots: keep --dataset.roots only.")
            logging.warning("--dataset.root is deprecated: pass --dataset.roots='[DIR]' (one root per repo id, "
                            "as `roboalign align reason|sft|grpo` take them).")
            several = len(self.repo_ids) > 1
            self.roots = [str(Path(self.root) / r) if several else self.root for r in self.repo_ids]
            self.root = None
        if self.roots is not None and len(self.roots) != len(self.repo_ids):
            raise ValueError(f"Got {len(self.roots)} --dataset.roots for {len(self.repo_ids)} --dataset.repo_ids: "
                             "give one root per repo id, in the same order (or none to use the LeRobot cache).")

    def dataset_roots(self) -> list[Path | None]:
        if not self.repo_ids:
            raise ValueError(
                "no dataset given: pass --dataset.repo_ids='[user/name]' (and --dataset.roots='[DIR]')."
            )
        return [Path(r) for r in self.roots] if self.roots is not None else [None] * len(self.repo_ids)


@dataclass
class FitConfig:
    dataset: DatasetSource = field(default_factory=DatasetSource)
    output_dir: Path | None = None
    chunk_size: int = 16
    scale: float = 10.0
    vocab_size: int = 2048
    # Step between consecutive windows inside an episode.
    stride: int = 1
    max_chunks: int | None = 200_000
    seed: int = 0


@dataclass
class ReportConfig:
    dataset: DatasetSource = field(default_factory=DatasetSource)
    output_dir: Path | None = None
    chunk_size: int = 16
    scales: list[float] = field(default_factory=lambda: [2.0, 5.0, 10.0, 20.0, 50.0])
    vocab_size: int = 2048
    stride: int = 1
    max_chunks: int | None = 20_000
    # Chunks of the last episodes (by order) held out for measuring reconstruction error.
    holdout_fraction: float = 0.2
    num_plotted: int = 3
    seed: int = 0


def main_fit(argv: list[str] | None = None) -> Path:
    cfg = draccus.parse(config_class=FitConfig, args=argv)
    if cfg.output_dir is None:
        raise ValueError("pass --output_dir=DIR: where to write the FAST tokenizer.")
    tokenizer = fit_from_datasets(
        cfg.dataset.repo_ids,
        cfg.dataset.dataset_roots(),
        cfg.chunk_size,
        scale=cfg.scale,
        vocab_size=cfg.vocab_size,
        stride=cfg.stride,
        max_chunks=cfg.max_chunks,
        seed=cfg.seed,
    )
    path = tokenizer.save_pretrained(cfg.output_dir)
    logging.info("FAST tokenizer (%d tokens) written to %s", tokenizer.bpe.get_vocab_size(), path)
    return path


def main_report(argv: list[str] | None = None) -> Path:
    cfg = draccus.parse(config_class=ReportConfig, args=argv)
    if cfg.output_dir is None:
        raise ValueError("pass --output_dir=DIR: where to write report.csv, report.md and the plots.")
    train, held_out = split_chunks(cfg)
    rows, reconstructions = [], {}
    for scale in tqdm(cfg.scales, desc="scales"):
        tokenizer = FastTokenizer.fit(train, scale=scale, vocab_size=cfg.vocab_size)
        rows.append(measure(tokenizer, held_out))
        reconstructions[scale] = tokenizer.decode(tokenizer.encode(held_out[: cfg.num_plotted]))[0]
    output = Path(cfg.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    write_tables(rows, output)
    plot_tradeoff(rows, output / "tradeoff.png")
    plot_trajectories(held_out[: cfg.num_plotted], reconstructions, output / "trajectories.png")
    print((output / "report.md").read_text())
    return output


def split_chunks(cfg: ReportConfig) -> tuple[np.ndarray, np.ndarray]:
    """Chunks of all datasets, split in order (so held-out windows do not overlap training ones)."""
    chunks = np.concatenate(
        [
            dataset_action_chunks(repo_id, root, cfg.chunk_size, cfg.stride)
            for repo_id, root in zip(cfg.dataset.repo_ids, cfg.dataset.dataset_roots(), strict=True)
        ]
    )
    if cfg.max_chunks is not None and len(chunks) > cfg.max_chunks:
        keep = np.sort(np.random.default_rng(cfg.seed).choice(len(chunks), cfg.max_chunks, replace=False))
        chunks = chunks[keep]
    cut = int(round(len(chunks) * (1 - cfg.holdout_fraction)))
    if not 0 < cut < len(chunks):
        raise ValueError(
            f"{len(chunks)} chunks cannot be split with --holdout_fraction={cfg.holdout_fraction}."
        )
    return chunks[:cut], chunks[cut:]


def measure(tokenizer: FastTokenizer, chunks: np.ndarray) -> dict:
    """Tokens per chunk and absolute reconstruction error per action dimension (raw units)."""
    token_lists = tokenizer.encode(chunks)
    tokens = np.array([len(ids) for ids in token_lists])
    decoded, valid = tokenizer.decode(token_lists)
    error = np.abs(decoded[valid] - chunks[valid]).reshape(-1, chunks.shape[-1])
    return {
        "scale": tokenizer.scale,
        "tokens_mean": float(tokens.mean()),
        "tokens_max": int(tokens.max()),
        "compression": chunks.shape[1] * chunks.shape[2] / float(tokens.mean()),
        "invalid": int((~valid).sum()),
        "error_mean": error.mean(axis=0).tolist(),
        "error_max": error.max(axis=0).tolist(),
    }


def write_tables(rows: list[dict], output: Path) -> None:
    dims = len(rows[0]["error_mean"])
    with open(output / "report.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["scale", "tokens_mean", "tokens_max", "compression", "invalid", "dim", "error_mean", "error_max"]
        )
        for row in rows:
            for dim in range(dims):
                writer.writerow(
                    [
                        row["scale"],
                        row["tokens_mean"],
                        row["tokens_max"],
                        row["compression"],
                        row["invalid"],
                        dim,
                        row["error_mean"][dim],
                        row["error_max"][dim],
                    ]
                )
    header = (
        "| scale | tokens/chunk (mean, max) | compression | "
        + " | ".join(f"dim {d} err mean / max" for d in range(dims))
        + " |"
    )
    lines = [header, "|" + "---|" * (3 + dims)]
    for row in rows:
        errors = " | ".join(
            f"{m:.4f} / {x:.4f}" for m, x in zip(row["error_mean"], row["error_max"], strict=True)
        )
        lines.append(
            f"| {row['scale']:g} | {row['tokens_mean']:.1f}, {row['tokens_max']} | "
            f"{row['compression']:.1f}x | {errors} |"
        )
    (output / "report.md").write_text("\n".join(lines) + "\n")


def plot_tradeoff(rows: list[dict], path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    tokens = [row["tokens_mean"] for row in rows]
    ax.plot(tokens, [np.mean(row["error_mean"]) for row in rows], "o-", label="mean |error|")
    ax.plot(tokens, [np.max(row["error_max"]) for row in rows], "s--", label="max |error|")
    for row, x in zip(rows, tokens, strict=True):
        ax.annotate(f"scale {row['scale']:g}", (x, np.mean(row["error_mean"])), fontsize=7)
    ax.set(xlabel="FAST tokens per chunk", ylabel="reconstruction error (action units)", yscale="log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_trajectories(originals: np.ndarray, reconstructions: dict[float, np.ndarray], path: Path) -> None:
    """One panel per chunk, all action dims: original (solid), smallest (dotted), largest scale (dashed)."""
    styles = {min(reconstructions): ":", max(reconstructions): "--"}
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(originals), figsize=(4 * len(originals), 3.2), squeeze=False)
    for index, ax in enumerate(axes[0]):
        for dim in range(originals.shape[-1]):
            (line,) = ax.plot(originals[index, :, dim], lw=2)
            for scale, style in styles.items():
                ax.plot(reconstructions[scale][index, :, dim], style, color=line.get_color(), lw=1)
        ax.set(title=f"held-out chunk {index}", xlabel="step")
    axes[0][0].set_ylabel("action")
    scales = " / ".join(f"{scale:g}" for scale in styles)
    fig.suptitle(f"solid: original; dotted / dashed: decoded at scale {scales}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
