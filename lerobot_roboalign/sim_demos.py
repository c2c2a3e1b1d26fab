"""Scripted SO-101 demonstrations as a LeRobotDataset v3, and the scripted expert's own success rate.

The package's scripted controllers (``lerobot_env_so101.scripted``) drive ``SO101LangEnv``
(the env ``lerobot-eval --env.type=so101_lang`` builds), so recorded frames look exactly
like what a policy sees at evaluation. Only successful episodes are kept.

Resuming: episodes are recorded in chunks, each a small finalized dataset that appears by
an atomic rename in ``<root>.recording/``; an interrupted run loses at most the chunk in
progress, and the next run re-records only that chunk (seeds are deterministic). When all
chunks exist they are merged with LeRobot's ``aggregate_datasets`` into a staging folder
renamed to ``root``: ``root`` is either a complete dataset or absent.

Seeds: recording attempts use seeds from ``RECORD_SEED_BASE`` (10^7) up; evaluation
(``lerobot-eval --seed``, default 1000, and ``evaluate_scripted_expert``) uses small seeds,
so evaluation episodes are held out from the training data. The varied alignment corpus
(``variation``, envs/variation.py) records from 3 x 10^7 up, and is refused the target tasks' range.
"""

import json
import logging
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
from lerobot.configs.video import RGBEncoderConfig
from lerobot_env_so101.policy import OBS_FIELD_NAMES
from tqdm import tqdm

from lerobot_roboalign.envs.configuration_so101_lang import IMAGE_KEY, make_so101_lang_env
from lerobot_roboalign.envs.so101_lang import (
    CAMERA,
    GOAL_PLACES,
    TASKS,
    ScriptedExpert,
    SO101LangEnv,
    check_task,
)
from lerobot_roboalign.envs.variation import (
    ALIGNMENT_SEED_BASE,
    VLA_SEED_BASE,
    SceneVariation,
    check_seed_range,
    seed_range,
)
from lerobot_roboalign.sim_cli import RecordDemosConfig

RECORD_SEED_BASE = VLA_SEED_BASE
MAX_ATTEMPTS_PER_CHUNK = 1000
MAX_CHUNKS_PER_TASK = 100
SUMMARY_FILE = "recording_summary.json"
SETTINGS_FILE = "settings.json"
# Camera frames as lossless H.264 (4:4:4; RGB to YUV rounds by at most 2/255). Not PNG in parquet: LeRobot's
# action-chunk query formats whole rows, so every action of a chunk decodes its frame's PNG too (a 16-step chunk:
# 17 decodes, 7.4 ms a sample against 2.2 ms from this video; lerobot-train on the demo, beside SFT: about 5 steps/s
# against 8-10). Not LeRobot's default AV1 at CRF 30 either: at 96x96 it moves pixels around the small cube by up
# to 0.73 (99th percentile 0.13, in [0, 1] units) from the rendered frames a policy is evaluated on.
VIDEO_ENCODER = RGBEncoderConfig(vcodec="h264", crf=0, pix_fmt="yuv444p", g=2, preset="ultrafast")
STATE_NAMES = list(OBS_FIELD_NAMES[:14])  # agent_pos: joint positions, velocities, gripper, end effector
ACTION_NAMES = ["dx", "dy", "dz", "grasp"]


def record_scripted_demos(
    root: str | Path,
    repo_id: str,
    tasks: tuple[str, ...] | list[str] = tuple(TASKS),
    episodes_per_task: int | dict[str, int] = 30,
    seed: int = 0,
    image_hw: tuple[int, int] = (96, 96),
    fps: int = 10,
    chunk_episodes: int = 10,
    use_videos: bool = True,
    workers: int = 1,
    seed_base: int | None = None,
    variation: SceneVariation | None = None,
) -> dict:
    """Record ``episodes_per_task`` successful scripted episodes per task (or, as a dict, that many of each
    task); returns the summary. ``workers`` > 1 records that many chunks at once, in their own processes: the
    dataset is the same (each chunk's seeds are fixed), only sooner. ``variation`` varies the scenes (the
    alignment corpus; each episode's task text is its drawn phrasing), from ``seed_base`` (None: 3 x 10^7 when
    varied, else 10^7).

    The summary (also ``<root>/recording_summary.json``) holds, per task, the instruction,
    the episodes kept and attempted, and so the scripted expert's success rate. A finished
    ``root`` is not recorded again.
    """
    root = Path(root)
    counts = episodes_per_task if isinstance(episodes_per_task, dict) else dict.fromkeys(tasks, episodes_per_task)
    _check_record_args(tasks, counts, chunk_episodes, fps)
    variation = variation or SceneVariation()
    seed_base = seed_base if seed_base is not None else (ALIGNMENT_SEED_BASE if variation.enabled else VLA_SEED_BASE)
    check_seed_range(seed_range(seed_base, seed), variation.enabled)
    settings = {
        "tasks": list(tasks), "episodes_per_task": episodes_per_task, "seed": seed, "image_hw": list(image_hw),
        "fps": fps, "chunk_episodes": chunk_episodes, "use_videos": use_videos,
    }  # fmt: skip
    if variation.enabled or seed_base != VLA_SEED_BASE:  # only then: target recordings keep their old settings
        settings |= {"seed_base": seed_base, "variation": asdict(variation)}
    if (root / SUMMARY_FILE).exists():
        summary = json.loads((root / SUMMARY_FILE).read_text())
        _check_same_settings(root, summary.get("settings"), settings)
        return summary
    if root.exists():
        raise FileExistsError(
            f"{root} exists but is not a finished recording; delete it or choose another root."
        )
    work = root.with_name(root.name + ".recording")
    work.mkdir(parents=True, exist_ok=True)
    if (work / SETTINGS_FILE).exists():  # an interrupted recording resumes only with the same settings
        _check_same_settings(work, json.loads((work / SETTINGS_FILE).read_text()), settings)
    (work / SETTINGS_FILE).write_text(json.dumps(settings))
    chunk_plan = [(task, k) for task in tasks for k in range(-(-counts[task] // chunk_episodes))]
    jobs = [(work, task, k, min(chunk_episodes, counts[task] - k * chunk_episodes), seed, image_hw, fps, use_videos,
             seed_base, variation) for task, k in chunk_plan]  # fmt: skip
    with tqdm(total=sum(counts.values()), desc="Recording scripted SO-101 demos", unit="ep") as progress:
        if workers > 1:
            _record_chunks_in_parallel(jobs, workers, progress)
        else:
            for job in jobs:
                stats = _record_chunk(*job, progress)
                progress.update(0 if stats["fresh"] else stats["kept"])
    summary = {**_summarize(work, chunk_plan, repo_id, variation.enabled), "settings": settings}
    _merge_chunks(work, chunk_plan, root, repo_id, summary)
    shutil.rmtree(work)
    return summary


def _check_same_settings(path: Path, recorded: dict | None, asked: dict) -> None:
    """Never silently keep (or extend) a recording made with other settings."""
    if recorded == asked:
        return
    changed = {k: (recorded or {}).get(k) for k in asked if (recorded or {}).get(k) != asked[k]}
    raise FileExistsError(
        f"{path} holds a recording made with other settings ({changed} there, "
        f"{ {k: asked[k] for k in changed} } asked). Fix: delete it (rm -r {path}) to record again, "
        "or choose another --root."
    )


def _check_record_args(tasks, counts: dict[str, int], chunk_episodes: int, fps: int) -> None:
    if not tasks:
        raise ValueError(f"No tasks to record; pass some of {list(TASKS)}.")
    if set(counts) != set(tasks):
        raise ValueError(f"Episode counts are given for {sorted(counts)} but the tasks are {list(tasks)}: give one per task.")
    for task in tasks:
        check_task(task)
        if counts[task] < 1 or chunk_episodes < 1:
            raise ValueError(
                f"episodes_per_task={counts[task]} ({task}) and chunk_episodes={chunk_episodes} must be >= 1."
            )
        if -(-counts[task] // chunk_episodes) > MAX_CHUNKS_PER_TASK:
            raise ValueError(f"At most {MAX_CHUNKS_PER_TASK} chunks per task: raise chunk_episodes.")
    env_fps = SO101LangEnv.metadata["render_fps"]
    if fps != env_fps:
        raise ValueError(
            f"fps={fps} does not match the simulator's control rate ({env_fps} Hz); use fps={env_fps}."
        )


def attempt_seed(seed: int, task: str, chunk: int, attempt: int, seed_base: int = RECORD_SEED_BASE) -> int:
    """The reset seed of one recording attempt: deterministic, in ``seed_range(seed_base, seed)``."""
    task_index = list(TASKS).index(task)
    return seed_range(seed_base, seed).start + task_index * 10**5 + chunk * MAX_ATTEMPTS_PER_CHUNK + attempt


def dataset_features(image_hw: tuple[int, int], use_videos: bool) -> dict:
    return {
        IMAGE_KEY: {
            "dtype": "video" if use_videos else "image",
            "shape": (*image_hw, 3),
            "names": ["height", "width", "channels"],
        },
        "observation.state": {"dtype": "float32", "shape": (len(STATE_NAMES),), "names": STATE_NAMES},
        "action": {"dtype": "float32", "shape": (len(ACTION_NAMES),), "names": ACTION_NAMES},
    }


def _chunk_dir(work: Path, task: str, chunk: int) -> Path:
    return work / f"{task}-{chunk:03d}"


def _record_chunks_in_parallel(jobs: list[tuple], workers: int, progress: tqdm) -> None:
    """``_record_chunk`` for every job in a pool of fresh (spawned: MuJoCo's GL context does not survive a fork)
    processes, the longest tasks first so that no long chunk is left for the end; progress per finished chunk."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    longest_first = sorted(jobs, key=lambda job: -TASKS[job[1]].max_steps)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        for future in as_completed([pool.submit(_record_chunk, *job) for job in longest_first]):
            stats = future.result()
            progress.update(stats["kept"])
            progress.set_postfix(task=stats["task"], expert_success=f"{stats['kept']}/{stats['attempts']}")


def _record_chunk(work, task, chunk, n_kept, seed, image_hw, fps, use_videos, seed_base=RECORD_SEED_BASE,
                  variation=None, progress=None) -> dict:
    """Record one chunk unless it is already complete; returns its attempt statistics (``progress``: a bar to
    update per episode, in this process)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    final = _chunk_dir(work, task, chunk)
    if (final / SUMMARY_FILE).exists():
        return {**json.loads((final / SUMMARY_FILE).read_text()), "fresh": False}
    staging = final.with_name(final.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    dataset = LeRobotDataset.create(
        repo_id=f"local/{final.name}",
        fps=fps,
        features=dataset_features(image_hw, use_videos),
        root=staging,
        robot_type="so101_sim",
        use_videos=use_videos,
        rgb_encoder=VIDEO_ENCODER,
    )
    scene = {"image_height": image_hw[0], "image_width": image_hw[1], "variation": variation}
    env = make_so101_lang_env(task, None, scene)
    expert = ScriptedExpert(env.unwrapped)
    attempts, lengths, texts = 0, [], set()
    try:
        while len(lengths) < n_kept:
            if attempts >= MAX_ATTEMPTS_PER_CHUNK:
                raise RuntimeError(
                    f"The scripted expert failed {attempts} times on {task!r}; the simulator is broken."
                )
            length = _record_episode(env, expert, dataset, attempt_seed(seed, task, chunk, attempts, seed_base))
            attempts += 1
            if length:
                lengths.append(length)
                texts.add(env.unwrapped.task_description)
            if progress is not None:
                progress.update(bool(length))
                progress.set_postfix(task=task, expert_success=f"{len(lengths)}/{attempts}")
    finally:
        env.close()
        dataset.finalize()
    stats = {"task": task, "chunk": chunk, "kept": len(lengths), "attempts": attempts, "lengths": lengths,
             "instructions": sorted(texts)}
    (staging / SUMMARY_FILE).write_text(json.dumps(stats))
    os.replace(staging, final)
    return {**stats, "fresh": True}


def _record_episode(env, expert: ScriptedExpert, dataset, reset_seed: int) -> int:
    """One scripted episode; saved and its length returned if it succeeded, else discarded (0)."""
    obs, _ = env.reset(seed=reset_seed)
    expert.reset()
    instruction = env.unwrapped.task_description
    success, steps = False, 0
    while True:
        action = expert.act()
        dataset.add_frame(
            {
                IMAGE_KEY: obs["pixels"][CAMERA],
                "observation.state": obs["agent_pos"].astype(np.float32),
                "action": action.astype(np.float32),
                "task": instruction,
            }
        )
        obs, _, terminated, truncated, info = env.step(action)
        steps += 1
        success = info["is_success"]
        if terminated or truncated:
            break
    if not success:
        dataset.clear_episode_buffer()
        return 0
    dataset.save_episode()
    return steps


def instructions(task: str) -> list[str]:
    """The instructions a task's episodes can carry: one per goal place where the goal is named in it."""
    template = TASKS[task].instruction
    return sorted({template.format(place=place) for place in GOAL_PLACES})


def _summarize(work: Path, chunk_plan, repo_id: str, varied: bool = False) -> dict:
    """Per task: the instructions (a varied corpus: those its episodes carry), episodes kept and attempted."""
    per_task: dict[str, dict] = {}
    for task, k in chunk_plan:
        stats = json.loads((_chunk_dir(work, task, k) / SUMMARY_FILE).read_text())
        entry = per_task.setdefault(
            task, {"instructions": [] if varied else instructions(task), "kept": 0, "attempts": 0, "lengths": []}
        )
        if varied:
            entry["instructions"] = sorted({*entry["instructions"], *stats["instructions"]})
        entry["kept"] += stats["kept"]
        entry["attempts"] += stats["attempts"]
        entry["lengths"] += stats["lengths"]
    for entry in per_task.values():
        entry["expert_success_rate"] = entry["kept"] / entry["attempts"]
    return {"repo_id": repo_id, "tasks": per_task}


def _merge_chunks(work: Path, chunk_plan, root: Path, repo_id: str, summary: dict) -> None:
    from lerobot.datasets.aggregate import aggregate_datasets

    staging = root.with_name(root.name + ".merging")
    shutil.rmtree(staging, ignore_errors=True)
    chunk_dirs = [_chunk_dir(work, task, k) for task, k in chunk_plan]
    aggregate_datasets(
        repo_ids=[f"local/{path.name}" for path in chunk_dirs],
        roots=chunk_dirs,
        aggr_repo_id=repo_id,
        aggr_root=staging,
    )
    (staging / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    os.replace(staging, root)


def evaluate_scripted_expert(
    tasks: tuple[str, ...] | list[str] = tuple(TASKS), n_episodes: int = 20, start_seed: int = 1000
) -> dict:
    """The scripted expert closed loop on ``lerobot-eval``'s seeds: the demo's reference row.

    The expert reads the simulator's true state, so it is not a LeRobot policy and runs
    here rather than through ``lerobot-eval``; everything else is shared: the env factory
    (same time limit, no images needed), the seeds (``start_seed + episode``, as
    ``lerobot-eval --seed=start_seed`` uses them) and the success criterion
    (``info["is_success"]``). Returns ``{task: {n_episodes, successes, seeds, lengths, pc_success}}``.
    """
    if n_episodes < 1:
        raise ValueError(f"n_episodes={n_episodes} must be >= 1.")
    results = {}
    for task in tasks:
        env = make_so101_lang_env(task, None, {"images": False})
        expert = ScriptedExpert(env.unwrapped)
        successes, lengths = [], []
        for episode in tqdm(range(n_episodes), desc=f"Scripted expert on {task}", unit="ep"):
            env.reset(seed=start_seed + episode)
            expert.reset()
            steps, done, info = 0, False, {}
            while not done:
                _, _, terminated, truncated, info = env.step(expert.act())
                steps += 1
                done = terminated or truncated
            successes.append(bool(info["is_success"]))
            lengths.append(steps)
        env.close()
        seeds = list(range(start_seed, start_seed + n_episodes))
        results[task] = {
            "n_episodes": n_episodes,
            "successes": successes,
            "seeds": seeds,
            "lengths": lengths,
            "pc_success": 100.0 * sum(successes) / n_episodes,
        }
    return results


def record_from_config(cfg: RecordDemosConfig) -> None:
    """``roboalign sim record`` once its config is parsed (sim_cli.main): record and print the summary."""
    logging.basicConfig(level=logging.INFO)
    summary = record_scripted_demos(
        cfg.root,
        cfg.repo_id,
        cfg.tasks,
        cfg.episodes_per_task,
        cfg.seed,
        (cfg.image_height, cfg.image_width),
        cfg.fps,
        cfg.chunk_episodes,
        cfg.use_videos,
        cfg.workers,
        cfg.seed_base,
        cfg.variation,
    )
    print(json.dumps({"config": asdict(cfg) | {"root": str(cfg.root)}, **summary}, indent=2))
