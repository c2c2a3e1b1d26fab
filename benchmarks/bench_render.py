"""SO-101 camera frame time: lerobot_env_so101's own render vs this project's cheap camera.

Three renderers of the same pose, same run, per GL backend (EGL, OSMesa) and frame size:
  package    the package env's ``render()``: 322K-triangle meshes, shadows, reflections, skybox, 8x MSAA
  flags_off  the package's model with those effects off
  decimated  ``lerobot_roboalign.envs.fast_render.SceneCamera``: decimated meshes and effects off
Writes benchmarks/results/bench_render.{json,md,png}. Run: ``python benchmarks/bench_render.py``.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
SIZES = (96, 128)
BACKENDS = ("egl", "osmesa")
RENDERERS = ("package", "flags_off", "decimated")


def _time_per_call(fn, repeats: int) -> float:
    fn()  # warm-up: context creation, texture upload
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def measure_backend(repeats: int) -> dict:
    """Frame times (s) for each renderer and size, in this process's MUJOCO_GL backend."""
    return {size: _measure_size(size, repeats) for size in SIZES}


def _measure_size(size: int, repeats: int) -> dict:
    from lerobot_env_so101 import GymRenderingSpec, SO101PickPlaceGymEnv

    from lerobot_roboalign.envs.fast_render import SceneCamera, make_renderer, mesh_face_count

    package_env = SO101PickPlaceGymEnv(render_spec=GymRenderingSpec(height=size, width=size), image_obs=True)
    package_env.reset(seed=0)
    data = package_env.data
    flags_off = make_renderer(package_env.model, size, size, effects=False)

    def draw_flags_off():
        flags_off.update_scene(data, camera="front")
        return flags_off.render()

    camera = SceneCamera(size, size)
    result = {
        "package": _time_per_call(package_env.render, max(2, repeats // 10)),
        "flags_off": _time_per_call(draw_flags_off, repeats),
        "decimated": _time_per_call(lambda: camera.render(data), repeats),
        "triangles": {
            "package": mesh_face_count(package_env.model),
            "decimated": mesh_face_count(camera.model),
        },
    }
    flags_off.close()
    camera.close()
    package_env.close()
    return result


def run_backends(repeats: int) -> dict:
    """Each backend in a fresh interpreter: MuJoCo binds its GL backend at import time."""
    out = {}
    for backend in BACKENDS:
        env = {**os.environ, "MUJOCO_GL": backend, "PYOPENGL_PLATFORM": backend}
        cmd = [sys.executable, __file__, "--child", f"--repeats={repeats}"]
        proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            out[backend] = {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
            continue
        out[backend] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def write_report(results: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d"),
    }
    (RESULTS / "bench_render.json").write_text(json.dumps({**meta, "seconds_per_frame": results}, indent=2))
    lines = [
        f"# SO-101 camera frame time ({meta['date']}, {meta['machine']})",
        "",
        "| backend | size | package (ms) | flags off (ms) | decimated (ms) | package / decimated |",
        "|---|---|---|---|---|---|",
    ]
    for backend, by_size in results.items():
        if "error" in by_size:
            lines.append(f"| {backend} | - | failed: {by_size['error']} | | | |")
            continue
        for size, t in by_size.items():
            lines.append(
                f"| {backend} | {size}x{size} | {t['package'] * 1e3:.1f} | {t['flags_off'] * 1e3:.1f} | "
                f"{t['decimated'] * 1e3:.1f} | {t['package'] / t['decimated']:.0f}x |"
            )
    any_ok = next(v for v in results.values() if "error" not in v)
    tri = next(iter(any_ok.values()))["triangles"]
    lines += ["", f"Triangles drawn per frame: package {tri['package']:,}, decimated {tri['decimated']:,}."]
    (RESULTS / "bench_render.md").write_text("\n".join(lines) + "\n")
    _plot(results)
    print("\n".join(lines))


def _plot(results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [
        (b, s, t) for b, by_size in results.items() if "error" not in by_size for s, t in by_size.items()
    ]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / len(RENDERERS)
    for i, name in enumerate(RENDERERS):
        xs = [g + i * width for g in range(len(groups))]
        ax.bar(xs, [t[name] * 1e3 for _, _, t in groups], width, label=name)
    ax.set_xticks([g + width for g in range(len(groups))], [f"{b}\n{s}x{s}" for b, s, _ in groups])
    ax.set_yscale("log")
    ax.set_ylabel("ms per frame (log)")
    ax.set_title("SO-101 front camera, one frame, CPU software GL")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "bench_render.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure_backend(args.repeats)))
        return
    write_report(run_backends(args.repeats))


if __name__ == "__main__":
    main()
