"""Alignment samples from LeRobotDatasets: camera images at t, task, optional state, FAST tokens of a_t..a_t+H.

One sample per sampled frame, identified as ``repo_id/episode/frame`` so reasoning texts (``align reason``)
and the SFT / GRPO stages join on it across runs. The prompts live here too: SFT, GRPO and ``generate``
must show the MLLM exactly the same text, and the VLA never sees them.
"""

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from lerobot.datasets.dataset_metadata import LeRobotDatasetMetadata
from lerobot.datasets.lerobot_dataset import LeRobotDataset
from PIL import Image
from tqdm.auto import tqdm

from lerobot_roboalign.action_vocab import ACTION_END, ACTION_START
from lerobot_roboalign.fast import FastTokenizer

logger = logging.getLogger(__name__)

CAMERA_PREFIX = "observation.images."

ALIGN_INSTRUCTION = (
    "Task: {task}.{state}\nThink about how the robot arm should move, then give the next actions. "
    "Answer as <think>reasoning</think><answer>" + ACTION_START + "action tokens" + ACTION_END + "</answer>."
)
REASONING_INSTRUCTION = (
    "Task: {task}.{state}\nLook at the camera images and explain step by step how the robot arm should move "
    "next to do the task: which direction, how far, and what the gripper should do. Do not write code or numbers "
    "for the actions."
)


@dataclass
class AlignDataConfig:
    """Which LeRobotDatasets, cameras and chunk length the alignment samples come from."""

    repo_ids: list[str] = field(default_factory=list)
    roots: list[str] | None = None  # local dataset roots, one per repo id (offline use)
    # Camera names without the "observation.images." prefix; empty = all cameras of the first dataset.
    cameras: list[str] = field(default_factory=list)
    chunk_size: int = 16  # actions per FAST chunk (paper: 16 at the VLA; FAST encodes the chunk from t)
    num_samples: int | None = None  # frames to sample over all datasets; None = every frame (paper RL: 12800)
    include_state: bool = False  # add the robot state to the prompt as text
    image_size: int | None = None  # resize images to a square of this side; None keeps the dataset's size
    seed: int = 0

    def __post_init__(self) -> None:
        if self.roots is not None and len(self.roots) != len(self.repo_ids):
            raise ValueError(
                f"Got {len(self.roots)} --dataset.roots for {len(self.repo_ids)} --dataset.repo_ids: give one root "
                "per repo id, in the same order (or none to use the LeRobot cache)."
            )


def sample_id(repo_id: str, episode_index: int, frame_index: int) -> str:
    return f"{repo_id}/{episode_index}/{frame_index}"


def state_text(state: np.ndarray | None) -> str:
    if state is None:
        return ""
    return " The robot state is [" + ", ".join(f"{value:.2f}" for value in state) + "]."


def align_messages(task: str, state: np.ndarray | None = None) -> list[dict]:
    """The user turn of SFT, GRPO and generate (images are injected in front of it by TRL / the caller)."""
    return [{"role": "user", "content": ALIGN_INSTRUCTION.format(task=task, state=state_text(state))}]


def reasoning_messages(task: str, state: np.ndarray | None = None) -> list[dict]:
    """The user turn asking the MLLM for zero-shot reasoning, with no action supervision."""
    return [{"role": "user", "content": REASONING_INSTRUCTION.format(task=task, state=state_text(state))}]


def answer_text(reasoning: str, action_span: str) -> str:
    """The target completion: ``<think>reasoning</think><answer><ACTION_START>...<ACTION_END></answer>``."""
    return f"<think>{reasoning.strip()}</think><answer>{action_span}</answer>"


def resolve_cameras(meta: LeRobotDatasetMetadata, cameras: list[str]) -> list[str]:
    """Full feature keys of the chosen cameras; a missing camera is an error that lists the available ones."""
    available = [key.removeprefix(CAMERA_PREFIX) for key in meta.camera_keys]
    if not available:
        raise ValueError(f"Dataset {meta.repo_id!r} has no camera ('observation.images.*') feature; RoboAlign needs one.")
    chosen = cameras or available
    missing = [name.removeprefix(CAMERA_PREFIX) for name in chosen if name.removeprefix(CAMERA_PREFIX) not in available]
    if missing:
        raise ValueError(
            f"Dataset {meta.repo_id!r} has no camera {missing}; it has {available}. "
            f"Fix: pass --dataset.cameras='[{','.join(available)}]' or a subset of it."
        )
    return [CAMERA_PREFIX + name.removeprefix(CAMERA_PREFIX) for name in chosen]


def check_fast_matches(fast: FastTokenizer, meta: LeRobotDatasetMetadata, chunk_size: int) -> None:
    action_dim = meta.features["action"]["shape"][0]
    if fast.action_dim != action_dim:
        raise ValueError(
            f"The FAST tokenizer was fitted on {fast.action_dim}-D actions but dataset {meta.repo_id!r} has "
            f"{action_dim}-D actions. Fix: fit one on this dataset (`roboalign tokenizer fit`) and pass it as "
            "--model.fast_tokenizer=DIR."
        )
    if fast.chunk_size != chunk_size:
        raise ValueError(
            f"The FAST tokenizer was fitted on chunks of {fast.chunk_size} actions, not --dataset.chunk_size="
            f"{chunk_size}. Fix: set --dataset.chunk_size={fast.chunk_size} or refit the tokenizer."
        )


def to_pil(image: torch.Tensor, size: int | None) -> Image.Image:
    array = image.permute(1, 2, 0).numpy() if image.ndim == 3 else image.numpy()
    if array.dtype != np.uint8:
        array = (np.clip(array, 0.0, 1.0) * 255).round().astype(np.uint8)
    pil = Image.fromarray(array)
    return pil.resize((size, size), Image.BICUBIC) if size else pil


def open_dataset(repo_id: str, root: str | None, cfg: AlignDataConfig, fast: FastTokenizer | None):
    meta = LeRobotDatasetMetadata(repo_id, root=root)
    cameras = resolve_cameras(meta, cfg.cameras)
    if fast is not None:
        check_fast_matches(fast, meta, cfg.chunk_size)
    delta = {"action": [i / meta.fps for i in range(cfg.chunk_size)]}
    dataset = LeRobotDataset(repo_id, root=root, delta_timestamps=delta, return_uint8=True)
    return dataset, cameras


def choose_frames(sizes: list[int], num_samples: int | None, seed: int) -> list[tuple[int, int]]:
    """(dataset index, frame index) pairs: all frames, or ``num_samples`` drawn without replacement."""
    pairs = [(d, i) for d, size in enumerate(sizes) for i in range(size)]
    if num_samples is None or num_samples >= len(pairs):
        return pairs
    picks = np.random.default_rng(seed).choice(len(pairs), size=num_samples, replace=False)
    return [pairs[i] for i in sorted(picks)]


def load_samples(cfg: AlignDataConfig, fast: FastTokenizer | None = None) -> list[dict]:
    """Alignment samples (dicts with id, task, images, state, actions, fast_tokens when ``fast`` is given)."""
    if not cfg.repo_ids:
        raise ValueError("No dataset given: pass --dataset.repo_ids='[user/name]' (and --dataset.roots for local ones).")
    roots = cfg.roots or [None] * len(cfg.repo_ids)
    opened = [open_dataset(repo_id, root, cfg, fast) for repo_id, root in zip(cfg.repo_ids, roots)]
    frames = choose_frames([len(dataset) for dataset, _ in opened], cfg.num_samples, cfg.seed)
    samples = []
    for dataset_index, frame in tqdm(frames, desc="alignment samples", unit="frame"):
        dataset, cameras = opened[dataset_index]
        samples.append(frame_sample(dataset, cameras, frame, cfg))
    if fast is not None:
        attach_fast_tokens(samples, fast)
    return samples


def attach_fast_tokens(samples: list[dict], fast: FastTokenizer) -> None:
    """Store each sample's FAST tokens of its action chunk under ``fast_tokens``."""
    tokens = fast.encode(np.stack([s["actions"] for s in samples]))
    for sample, sample_tokens in zip(samples, tokens, strict=True):
        sample["fast_tokens"] = [int(t) for t in sample_tokens]


def frame_sample(dataset: LeRobotDataset, cameras: list[str], index: int, cfg: AlignDataConfig) -> dict:
    item = dataset[index]
    state = item["observation.state"].numpy() if cfg.include_state and "observation.state" in item else None
    episode, frame = int(item["episode_index"]), int(item["frame_index"])
    return {
        "id": sample_id(dataset.repo_id, episode, frame),
        "repo_id": dataset.repo_id,
        "episode_index": episode,
        "frame_index": frame,
        "task": item["task"],
        "state": state,
        "images": [to_pil(item[key], cfg.image_size) for key in cameras],
        "actions": item["action"].numpy().astype(np.float32),
        "action_names": action_names(dataset),
    }


def action_names(dataset: LeRobotDataset) -> list[str] | None:
    names = dataset.meta.features["action"].get("names")
    return list(names) if isinstance(names, list) else None
