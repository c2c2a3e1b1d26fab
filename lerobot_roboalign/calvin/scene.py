"""CALVIN's scene D and task oracle, built from ``calvin_env`` alone (no dataset, no ``calvin_agent``).

The official evaluation builds scene D from ``task_ABC_D/validation/.hydra/merged_config.yaml``
(inside the dataset download). That file is a composition of calvin_env's own ``conf/``:
``config_data_collection.yaml`` (scene ``calvin_scene_D``, robot ``panda_longer_finger``) with
``cameras=static_and_gripper``; CALVIN's RL notebook builds the env the same way, so that is the
default here and ``merged_config.yaml`` is an option. The chain's initial scene and the success
oracle are the official evaluation's (cited below), written here so that ``calvin_agent``
(pytorch_lightning, the MCIL model) is not needed.
"""

import contextlib
import importlib
from pathlib import Path
from typing import Any

import numpy as np

INSTALL_FIX = (
    "CALVIN's simulator (calvin_env) is not on PyPI. Install it with its runtime dependencies "
    "(Python 3.12, headless):\n"
    "  git clone --recurse-submodules https://github.com/mees/calvin_env.git\n"
    "  pip install -e '.[calvin]'   # in the lerobot-roboalign checkout: pinned runtime deps\n"
    "  pip install --no-deps -e calvin_env\n"
    "(an editable install: calvin_env finds its conf/ and data/ next to its source). In this repository "
    "`make setup` does it from ../shared/calvin when that folder exists (override with CALVIN_SRC=...)."
)
RUNTIME_MODULES = ("calvin_env", "pybullet", "hydra", "omegaconf", "gym", "quaternion", "git", "cv2")
SCENE_OVERRIDES = (
    "cameras=static_and_gripper",
    # calvin_env's config asks for hydra-colorlog's loggers; Hydra's defaults avoid that dependency.
    "hydra/job_logging=default",
    "hydra/hydra_logging=default",
)


def require_calvin() -> None:
    for module in RUNTIME_MODULES:
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise ImportError(f"CALVIN needs the '{module}' module, which is missing. {INSTALL_FIX}") from err


def calvin_env_root() -> Path:
    """The folder holding calvin_env's ``conf/`` and ``data/`` (its ``REPO_BASE``)."""
    import calvin_env

    root = Path(calvin_env.__file__).parents[1]
    if not (root / "conf" / "config_data_collection.yaml").is_file():
        raise FileNotFoundError(f"calvin_env at {root} has no conf/: install it editable. {INSTALL_FIX}")
    return root


def _tolerate_missing_git_checkout() -> None:
    """PlayTableSimEnv logs its git commit hash and fails outside a git checkout (an unpacked tarball)."""
    import calvin_env.envs.play_table_env as play_table_env

    original = play_table_env.get_git_commit_hash
    if getattr(original, "tolerant", False):
        return

    def commit_hash(path: Path) -> str:
        try:
            return original(path)
        except Exception:  # git.InvalidGitRepositoryError, NoSuchPathError, a repo with no HEAD
            return "unknown (not a git checkout)"

    commit_hash.tolerant = True
    play_table_env.get_git_commit_hash = commit_hash


def scene_d_config(use_egl: bool = True):
    """calvin_env's data-collection config for scene D with the static and gripper cameras."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(calvin_env_root() / "conf"), version_base=None):
        cfg = compose("config_data_collection", overrides=list(SCENE_OVERRIDES))
    cfg.env.use_egl = use_egl
    return cfg.env


def make_scene_d(dataset_path: str | None = None, use_egl: bool = True):
    """CALVIN's PlayTableSimEnv in scene D, headless.

    ``use_egl=True`` renders with pybullet's EGL plugin, as CALVIN's dataset was rendered
    (``use_egl: true`` in calvin_env's env config); ``False`` uses the TinyRenderer (CPU, faster
    without a GPU, slightly different pixels). ``dataset_path`` (``task_ABC_D`` or its
    ``validation/``) uses the official ``merged_config.yaml`` instead, via calvin_env's ``get_env``.
    """
    require_calvin()
    _tolerate_missing_git_checkout()
    from hydra.utils import instantiate

    if dataset_path:
        from calvin_env.envs.play_table_env import get_env

        folder = Path(dataset_path).expanduser()
        folder = folder if (folder / ".hydra").is_dir() else folder / "validation"
        if not (folder / ".hydra" / "merged_config.yaml").is_file():
            raise FileNotFoundError(
                f"{folder} has no .hydra/merged_config.yaml: point --dataset_path at the task_ABC_D folder of "
                "CALVIN's download, or leave it empty to build scene D from calvin_env's own configs."
            )
        return get_env(folder, show_gui=False)
    return instantiate(scene_d_config(use_egl), show_gui=False, use_vr=False, use_scene_info=True)


def make_task_oracle():
    """calvin_env's ``Tasks`` with ``new_playtable_tasks.yaml`` (identical to the official evaluation's copy)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    return instantiate(OmegaConf.load(calvin_env_root() / "conf" / "tasks" / "new_playtable_tasks.yaml"))


def fnv1_32(text: str) -> int:
    """``pyhash.fnv1_32()(text)`` (seed 0, over the string's UTF-16-LE bytes), which the evaluation seeds with.

    pyhash's sdist no longer builds; the values equal the ``pyhash2`` wheel's (tested).
    """
    value = 0
    for byte in text.encode("utf-16-le"):
        value = (value * 0x01000193) % 2**32 ^ byte
    return value


@contextlib.contextmanager
def _numpy_seed(seed: int):
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


# Robot state and block positions of every initial scene, from the official evaluation
# (mees/calvin fa03f01, calvin_models/calvin_agent/evaluation/utils.py,
# get_env_state_for_initial_condition).
INITIAL_ROBOT_OBS = np.array(
    [0.02586889, -0.2313129, 0.5712808, 3.09045411, -0.02908596, 1.50013585, 0.07999963, -1.21779124,
     1.03987629, 2.11978254, -2.34205014, -0.87015899, 1.64119093, 0.55344928, 1.0]
)  # fmt: skip
BLOCK_SLIDER_LEFT = np.array([-2.40851662e-01, 9.24044687e-02, 4.60990009e-01])
BLOCK_SLIDER_RIGHT = np.array([7.03416330e-02, 9.24044687e-02, 4.60990009e-01])
BLOCK_TABLE = (
    np.array([5.00000896e-02, -1.20000177e-01, 4.59990009e-01]),
    np.array([2.29995412e-01, -1.19995140e-01, 4.59990010e-01]),
)
BLOCK_ROT_Z_RANGE = (np.pi / 2 - np.pi / 8, np.pi / 2 + np.pi / 8)


def initial_scene_state(initial_state: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(robot_obs (15,), scene_obs (24,)) for a symbolic initial state, as the official evaluation sets them.

    Block yaws and which table spot each block takes are drawn with numpy seeded by a hash of
    the state's values, so every evaluation of a chain starts from the same scene.
    """
    table = list(BLOCK_TABLE)
    cabinet = {"slider_right": BLOCK_SLIDER_RIGHT, "slider_left": BLOCK_SLIDER_LEFT}
    with _numpy_seed(fnv1_32(str(initial_state.values()))):
        np.random.shuffle(table)
        scene_obs = np.zeros(24)
        scene_obs[0] = 0.28 if initial_state["slider"] == "left" else 0.0
        scene_obs[1] = 0.22 if initial_state["drawer"] == "open" else 0.0
        scene_obs[3] = 0.088 if initial_state["lightbulb"] == 1 else 0.0
        scene_obs[4] = initial_state["lightbulb"]
        scene_obs[5] = initial_state["led"]
        red, blue, pink = (initial_state[f"{c}_block"] for c in ("red", "blue", "pink"))
        scene_obs[6:9] = cabinet.get(red, table[0])
        scene_obs[11] = np.random.uniform(*BLOCK_ROT_Z_RANGE)
        scene_obs[12:15] = cabinet.get(blue, table[1] if red == "table" else table[0])
        scene_obs[17] = np.random.uniform(*BLOCK_ROT_Z_RANGE)
        scene_obs[18:21] = cabinet.get(pink, table[1])
        scene_obs[23] = np.random.uniform(*BLOCK_ROT_Z_RANGE)
    return INITIAL_ROBOT_OBS.copy(), scene_obs
