"""Linear probes: how readable the demonstrated action chunk is in each layer of a backbone.

The VLA's head reads one layer of a frozen backbone, so a backbone helps the VLA only if that
layer carries what the action depends on beyond the robot state (where the cube is). A ridge
probe fitted on training episodes and scored on held-out ones measures it per layer, as the
VLA sees the observation (its prompt, image size and the final norm it applies to the cut
layer); the same probe on the state and task alone is the baseline the features must beat.
A second probe asks the narrower question directly: can the cube's position be read from the
image tokens of first frames, where nothing else moves?
"""

from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor
from transformers import AutoConfig

from .align.data import AlignDataConfig, is_heldout, load_samples
from .alignment_format import AlignmentFormat
from .backbone import VLMBackbone, _language_model

RIDGE_ALPHAS = (1.0, 10.0, 100.0, 1e3, 1e4, 1e5)
BATCH_SIZE = 32


@dataclass
class ProbeData:
    """The inputs and targets every probe shares, whatever the backbone."""

    context: np.ndarray  # (N, state + task one-hot): what the head gets besides the backbone
    actions: np.ndarray  # (N, chunk x action dim), the dataset's chunks
    episodes: np.ndarray  # (N,) episode index of each frame


def _image_tensor(image) -> Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)


@torch.no_grad()
def layer_features(backbone_path: str, samples: list[dict]) -> dict[int, np.ndarray]:
    """Image-token features of every LLM layer, normed as the VLA reads a cut layer (flattened per frame)."""
    fmt = AlignmentFormat.from_pretrained(backbone_path) or AlignmentFormat()
    size = fmt.image_size or samples[0]["images"][0].size[0]
    num_layers = AutoConfig.from_pretrained(backbone_path).get_text_config().num_hidden_layers
    backbone = VLMBackbone(backbone_path, num_layers, torch.float32, (size, size), fmt.prompt_template)
    backbone.eval()
    language_model = _language_model(backbone.vlm)
    captured: dict[int, Tensor] = {}
    hooks = [
        layer.register_forward_hook(lambda _m, _i, out, k=k: captured.__setitem__(k, out[0] if isinstance(out, tuple) else out))
        for k, layer in enumerate(language_model.layers, start=1)
    ]
    image_token = backbone.vlm.config.image_token_id
    features: dict[int, list[np.ndarray]] = {k: [] for k in range(1, len(language_model.layers) + 1)}
    try:
        for start in range(0, len(samples), BATCH_SIZE):
            batch = samples[start : start + BATCH_SIZE]
            cameras = [torch.stack([_image_tensor(s["images"][c]) for s in batch]) for c in range(len(batch[0]["images"]))]
            inputs = backbone.prepare(cameras, [s["task"] for s in batch])
            backbone.vlm(**inputs, use_cache=False)
            is_image = inputs["input_ids"] == image_token
            for k, hidden in captured.items():
                normed = language_model.norm(hidden)
                features[k].append(normed[is_image].reshape(len(batch), -1).numpy())
    finally:
        for hook in hooks:
            hook.remove()
    return {k: np.concatenate(rows) for k, rows in features.items()}


def ridge_r2(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, alpha: float) -> float:
    """R^2 on the test rows of a ridge fit (inputs standardised and targets centred on the training rows)."""
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    xs, xt = (x_train - mean) / std, (x_test - mean) / std
    y_mean = y_train.mean(0)
    gram = xs @ xs.T + alpha * np.eye(len(xs))  # dual form: image tokens give more features than frames
    weights = xs.T @ np.linalg.solve(gram, y_train - y_mean)
    residual = y_test - (xt @ weights + y_mean)
    return float(1.0 - (residual**2).sum() / ((y_test - y_mean) ** 2).sum())


def probe_r2(inputs: np.ndarray, data: ProbeData, heldout: np.ndarray) -> float:
    """Held-out R^2 with alpha chosen on a validation fold of the training episodes (never on held-out ones)."""
    train_episodes = np.unique(data.episodes[~heldout])
    valid = np.isin(data.episodes, train_episodes[::4]) & ~heldout
    fit = ~heldout & ~valid
    best = max(RIDGE_ALPHAS, key=lambda a: ridge_r2(inputs[fit], data.actions[fit], inputs[valid], data.actions[valid], a))
    return ridge_r2(inputs[~heldout], data.actions[~heldout], inputs[heldout], data.actions[heldout], best)


def probe_data(samples: list[dict]) -> ProbeData:
    tasks = sorted({s["task"] for s in samples})
    task_onehot = np.eye(len(tasks))[[tasks.index(s["task"]) for s in samples]]
    return ProbeData(
        context=np.concatenate([np.stack([s["state"] for s in samples]), task_onehot], axis=1),
        actions=np.stack([s["actions"].reshape(-1) for s in samples]),
        episodes=np.array([s["episode_index"] for s in samples]),
    )


def probe_backbones(backbones: dict[str, str], data_cfg: AlignDataConfig) -> dict:
    """Held-out R^2 of the action chunk from state + task (the baseline) and, per backbone and layer, from the
    image tokens alone and from state + task + image tokens."""
    samples = load_samples(replace(data_cfg, split="all", include_state=True))
    data = probe_data(samples)
    heldout = np.array([is_heldout(s["episode_index"], data_cfg.holdout_every) for s in samples])
    rows = {
        name: {
            layer: {"image": probe_r2(f, data, heldout),
                    "with_context": probe_r2(np.concatenate([data.context, f], axis=1), data, heldout)}
            for layer, f in layer_features(path, samples).items()
        }
        for name, path in backbones.items()
    }  # fmt: skip
    return {"state_and_task": probe_r2(data.context, data, heldout), "backbones": rows, "n_frames": len(samples),
            "n_heldout": int(heldout.sum())}  # fmt: skip


def cube_frames(n_frames: int, image_size: int, seed: int, camera_off: bool = False) -> tuple[list[dict], np.ndarray]:
    """First frames of reach_and_close episodes, where the arm is at home and only the cube moves, and the
    cube's (x, y) in metres: the one thing in the image the robot state cannot tell the head."""
    from PIL import Image

    from .envs.so101_lang import SO101LangEnv

    env = SO101LangEnv("reach_and_close", image_size, image_size, camera_off=camera_off)
    samples, positions = [], []
    try:
        for episode in range(n_frames):
            observation, _ = env.reset(seed=seed + episode)
            samples.append({"images": [Image.fromarray(observation["pixels"]["front"])], "task": env.task_description})
            positions.append(env.block_pos[:2])
    finally:
        env.close()
    return samples, np.stack(positions)


def cube_position_r2(
    features: np.ndarray, positions: np.ndarray, train_sizes: tuple[int, ...], n_test: int
) -> dict[int, float]:
    """Held-out R^2 of the cube's (x, y) from a frame's image tokens (kept apart, as flattened), per number of
    training frames; the last ``n_test`` frames are the held-out ones."""
    test = np.arange(len(features)) >= len(features) - n_test
    results = {}
    for n_train in train_sizes:
        rows = (np.arange(len(features)) < n_train) | test
        data = ProbeData(context=np.empty((rows.sum(), 0)), actions=positions[rows], episodes=np.arange(rows.sum()))
        results[n_train] = probe_r2(features[rows], data, test[rows])
    return results


def probe_cube_position(
    backbones: dict[str, str], layer: int, image_size: int, train_sizes: tuple[int, ...], n_test: int, seed: int
) -> dict:
    """Is the cube's position in the layer the head reads? Per backbone and number of training frames, held-out
    R^2 of its (x, y) from the image tokens; with the camera off (a grey frame) the probe must find nothing."""
    samples, positions = cube_frames(max(train_sizes) + n_test, image_size, seed)
    blank, _ = cube_frames(len(samples), image_size, seed, camera_off=True)
    results: dict = {"train_sizes": list(train_sizes), "n_test": n_test, "backbones": {}}
    for name, path in backbones.items():
        features = layer_features(path, samples)[layer]
        results["backbones"][name] = cube_position_r2(features, positions, train_sizes, n_test)
    blank_features = layer_features(next(iter(backbones.values())), blank)[layer]
    results["camera_off"] = cube_position_r2(blank_features, positions, train_sizes[-1:], n_test)
    return results
