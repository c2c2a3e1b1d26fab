"""``roboalign files export DIR``: write the arm configs and example calibration files where the README expects them.

The journeys use ``robots/<arm>/*.yaml`` and ``calibration/*.json`` by path. A clone has them at its root (the
source of truth); a wheel carries a copy as package data (``lerobot_roboalign/_shipped``, added by ``setup.py``
at build time), so an installed copy writes them out with this command:

    roboalign files export .    # ./robots/..., ./calibration/...
"""

import shutil
from dataclasses import dataclass
from pathlib import Path

import draccus

SHIPPED_DIRS = ("robots", "calibration")
PACKAGED = Path(__file__).resolve().parent / "_shipped"


def shipped_root() -> Path:
    """The folder holding ``robots/`` and ``calibration/``: the wheel's package data, else the clone's root."""
    return PACKAGED if PACKAGED.is_dir() else Path(__file__).resolve().parents[1]


@dataclass
class ExportConfig:
    # Where robots/ and calibration/ are written (also accepted as the first positional argument).
    output_dir: Path = Path(".")
    # Replace files that exist and differ (by default they are kept and listed).
    overwrite: bool = False


def export_files(output_dir: Path, overwrite: bool = False) -> tuple[list[Path], list[Path]]:
    """Copy every shipped file under ``output_dir``; returns (written, kept because they differ)."""
    root, written, kept = shipped_root(), [], []
    for source in sorted(p for name in SHIPPED_DIRS for p in (root / name).rglob("*") if p.is_file()):
        target = Path(output_dir) / source.relative_to(root)
        if target.is_file() and target.read_bytes() != source.read_bytes() and not overwrite:
            kept.append(target)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        written.append(target)
    if not written and not kept:
        raise SystemExit(
            f"roboalign files export: no robots/ or calibration/ under {root}; reinstall the package."
        )
    return written, kept


def main_export(argv: list[str] | None = None) -> None:
    argv = list(argv or [])
    positional = [a for a in argv if not a.startswith("-")]
    if len(positional) > 1:
        raise SystemExit(f"roboalign files export: one DIR expected, got {positional}.")
    args = [a for a in argv if a.startswith("-")] + [f"--output_dir={p}" for p in positional]
    cfg = draccus.parse(config_class=ExportConfig, args=args)
    written, kept = export_files(cfg.output_dir, cfg.overwrite)
    print(f"Wrote {len(written)} files under {cfg.output_dir}/{{{','.join(SHIPPED_DIRS)}}}.")
    if kept:
        print(f"Kept {len(kept)} files that differ from the shipped ones (--overwrite=true replaces them): "
              + ", ".join(map(str, kept)))  # fmt: skip
