"""The sample-efficiency probe (docs/study.md): how much of the action chunk a ridge regression reads off each
row's frozen features, fitted on 10, 20, 50 and 100 demonstrations per task, scored on held-out target episodes.

Features: the image tokens of the layer the head reads (probe.layer_features: the VLA's prompt, image size and
final norm), mean-pooled, beside the instruction's one-hot (the head knows the instruction; image tokens come
before it in the prompt, so they cannot carry it). Targets: the action chunk normalised to [-1, 1] per dimension by the
1st/99th percentiles of the largest fitting set (FAST's normalisation). The input-blind baseline predicts each
instruction's mean chunk over the same demonstrations (pick_and_place's names its goal).
"""

from pathlib import Path

import numpy as np

from .config import StudySizes


def ridge_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, alpha: float) -> np.ndarray:
    """A ridge fit's predictions (inputs standardised on the training rows, targets centred), as probe.ridge_r2."""
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    xs, xt = (x_train - mean) / std, (x_test - mean) / std
    y_mean = y_train.mean(0)
    weights = xs.T @ np.linalg.solve(xs @ xs.T + alpha * np.eye(len(xs)), y_train - y_mean)
    return xt @ weights + y_mean


def scores(prediction: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """R^2 (around the held-out frames' mean) and mean absolute error per chunk entry."""
    total = ((target - target.mean(0)) ** 2).sum()
    return {
        "r2": float(1 - ((target - prediction) ** 2).sum() / total),
        "l1": float(np.abs(target - prediction).mean()),
    }


def choose_alpha(x: np.ndarray, y: np.ndarray, episodes: np.ndarray) -> float:
    """The ridge penalty scoring best on every 4th fitting episode when fitted on the others (fitting episodes
    only; the middle penalty when there are too few episodes to hold one out)."""
    from ..probe import RIDGE_ALPHAS

    unique = np.unique(episodes)
    if len(unique) < 4:
        return RIDGE_ALPHAS[len(RIDGE_ALPHAS) // 2]
    valid = np.isin(episodes, unique[::4])
    return max(
        RIDGE_ALPHAS, key=lambda a: scores(ridge_predict(x[~valid], y[~valid], x[valid], a), y[valid])["r2"]
    )


def normaliser(chunks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    low, high = np.percentile(chunks, [1, 99], axis=0)
    return low, np.maximum(high - low, 1e-6)


def curve(features: np.ndarray, actions: np.ndarray, tasks: np.ndarray, episodes: np.ndarray, rank: np.ndarray,
          test: np.ndarray, demos: list[int]) -> dict[int, dict[str, float]]:  # fmt: skip
    """Held-out scores of the probe fitted on the frames of each task's first ``n`` episodes (``rank``: an episode's
    order within its task), for each ``n`` in ``demos``; ``features`` None gives the blind baseline."""
    onehot = (tasks[:, None] == np.unique(tasks)[None]).astype(float)
    results = {}
    for n in demos:
        fit = ~test & (rank < n)
        if features is None:
            # an instruction no fitting episode has (a goal drawn only in held-out ones): the mean of all of them
            means = {task: actions[fit & (tasks == task)].mean(0) if (fit & (tasks == task)).any()
                     else actions[fit].mean(0) for task in np.unique(tasks)}  # fmt: skip
            prediction = np.stack([means[task] for task in tasks[test]])
        else:
            x = np.concatenate([features, onehot], axis=1)
            alpha = choose_alpha(x[fit], actions[fit], episodes[fit])
            prediction = ridge_predict(x[fit], actions[fit], x[test], alpha)
        results[n] = scores(prediction, actions[test])
    return results


def probe_frames(root: Path, repo_id: str, sizes: StudySizes) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Evenly spaced frames of each probe episode, decoded, and per frame: its instruction, episode, the episode's
    rank among its task's and whether it is held out (each task's episodes past the largest fitting set)."""
    import json

    from ..align.data import AlignDataConfig, load_samples

    recorded = json.loads((root / "recording_summary.json").read_text())["tasks"]
    task_of = {text: task for task, entry in recorded.items() for text in entry["instructions"]}
    data = AlignDataConfig(repo_ids=[repo_id], roots=[str(root)], chunk_size=sizes.chunk_size,
                           image_size=sizes.image_size)  # fmt: skip
    samples = load_samples(data)
    episodes = np.array([samples.value(i, "episode_index") for i in range(len(samples))])
    chosen, rank, instructions, seen = [], [], [], dict.fromkeys(recorded, 0)
    for episode in np.unique(episodes):
        frames = np.flatnonzero(episodes == episode)
        instruction = samples.value(int(frames[0]), "task")
        spaced = np.unique(
            np.linspace(0, len(frames) - 1, min(len(frames), sizes.probe_frames_per_episode)).round()
        )
        chosen += [int(frames[int(i)]) for i in spaced]
        rank += [seen[task_of[instruction]]] * len(spaced)
        instructions += [instruction] * len(spaced)
        seen[task_of[instruction]] += 1
    selected = samples.select(chosen)
    rows = [dict(selected[i]) for i in range(len(selected))]
    labels = {"tasks": np.array(instructions), "episodes": episodes[chosen], "rank": np.array(rank)}
    labels["test"] = labels["rank"] >= max(sizes.probe_demos)
    return rows, labels


def pooled_features(backbone: str, samples: list[dict], layer: int) -> np.ndarray:
    """The head's layer's image tokens, mean-pooled per frame."""
    from transformers import AutoConfig

    from ..probe import layer_features

    hidden = AutoConfig.from_pretrained(backbone).get_text_config().hidden_size
    flat = layer_features(backbone, samples)[layer]
    return flat.reshape(len(samples), -1, hidden).mean(1)


def probe_curve(backbones: dict[str, str], root: Path, repo_id: str, sizes: StudySizes) -> dict:
    """Per row and number of demonstrations per task: held-out R^2 and L1 of the probe, and of the blind baseline."""
    from ..runner import TINY_VLM_LAYER

    samples, labels = probe_frames(root, repo_id, sizes)
    if not labels["test"].any():
        raise ValueError(f"no held-out probe episodes: record more than {max(sizes.probe_demos)} per task "
                         "(--sizes.probe_test_episodes_per_task).")  # fmt: skip
    chunks = np.stack([s["actions"].reshape(-1) for s in samples])
    low, span = normaliser(chunks[~labels["test"]])
    actions = np.clip(2 * (chunks - low) / span - 1, -1, 1)
    common = (actions, labels["tasks"], labels["episodes"], labels["rank"], labels["test"], sizes.probe_demos)
    rows = {
        row: curve(pooled_features(path, samples, TINY_VLM_LAYER), *common) for row, path in backbones.items()
    }
    return {"demos": list(sizes.probe_demos), "rows": rows, "blind": curve(None, *common), "layer": TINY_VLM_LAYER,
            "n_test_frames": int(labels["test"].sum()), "n_frames": len(samples)}  # fmt: skip
