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
SPLITS = ("all", "train", "heldout")

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
    # With include_state: the observation.state entries written, by name (empty = all). Fewer, relevant numbers make
    # a shorter prompt, e.g. the end effector and gripper for actions that move them: '[ee_x,ee_y,ee_z,gripper_pose]'.
    state_names: list[str] = field(default_factory=list)
    image_size: int | None = None  # resize images to a square of this side; None keeps the dataset's size
    seed: int = 0
    # Episode split so a score never sees a training frame: with holdout_every=k, episodes whose index
    # is k-1 mod k are held out; split=train uses the others, split=heldout only those, split=all every one.
    holdout_every: int = 0
    split: str = "all"  # all | train | heldout

    def __post_init__(self) -> None:
        if self.roots is not None and len(self.roots) != len(self.repo_ids):
            raise ValueError(
                f"Got {len(self.roots)} --dataset.roots for {len(self.repo_ids)} --dataset.repo_ids: give one root "
                "per repo id, in the same order (or none to use the LeRobot cache)."
            )
        if self.split not in SPLITS:
            raise ValueError(f"--dataset.split={self.split!r}: choose one of {SPLITS}.")
        if self.split != "all" and self.holdout_every < 2:
            raise ValueError(
                f"--dataset.split={self.split} needs --dataset.holdout_every=K (K >= 2: every K-th episode held out)."
            )


def target_completion(reasoning: str, fast_tokens: list[int], vocabulary) -> str:
    """The full SFT target of a sample (what a completion cap must be able to hold)."""
    return answer_text(reasoning, vocabulary.format_span(fast_tokens))


def longest_target_tokens(samples: list[dict], reasoning: dict[str, str], tokenizer, vocabulary) -> int:
    """Tokens in the longest target completion (reasoning + markup + FAST span) over ``samples``."""
    texts = [target_completion(reasoning.get(s["id"], ""), s["fast_tokens"], vocabulary) for s in samples]
    return max(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]) + 1  # + end of turn


def check_completion_cap(cap: int, longest: int, option: str) -> None:
    """A cap that cannot hold a full target measures (and rewards) brevity, not actions: refuse it."""
    if cap < longest:
        raise ValueError(
            f"{option}={cap} cannot hold the longest target completion ({longest} tokens: reasoning, markup "
            f"and FAST span). Fix: set {option}={longest + 16} or more, or 0 to size it from the data."
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


@dataclass
class OpenedDataset:
    """A LeRobotDataset with its chosen cameras and every frame's action chunk, built once."""

    dataset: LeRobotDataset
    cameras: list[str]
    chunks: np.ndarray  # (frames, chunk_size, action_dim)
    state_indices: list[int] | None  # the observation.state entries of the prompt; None = all


def action_chunks(dataset: LeRobotDataset, chunk_size: int) -> np.ndarray:
    """Every frame's actions a_t..a_t+H-1, padded past its episode's end with the last action.

    The chunks ``delta_timestamps`` would give (LeRobot clamps each query to the episode), from the action column
    alone: a delta query through ``__getitem__`` formats whole rows, so it decodes one camera image per action.
    """
    actions = np.asarray(dataset.hf_dataset.with_format("numpy", columns=["action"])[:]["action"], dtype=np.float32)
    episodes = dataset.meta.episodes
    chunks = np.empty((len(actions), chunk_size, actions.shape[1]), dtype=np.float32)
    for start, stop in zip(episodes["dataset_from_index"], episodes["dataset_to_index"], strict=True):
        frames = np.arange(int(start), int(stop))
        chunks[frames] = actions[np.minimum(frames[:, None] + np.arange(chunk_size), int(stop) - 1)]
    return chunks


def open_dataset(repo_id: str, root: str | None, cfg: AlignDataConfig, fast: FastTokenizer | None) -> OpenedDataset:
    meta = LeRobotDatasetMetadata(repo_id, root=root)
    cameras = resolve_cameras(meta, cfg.cameras)
    if fast is not None:
        check_fast_matches(fast, meta, cfg.chunk_size)
    dataset = LeRobotDataset(repo_id, root=root, return_uint8=True)
    return OpenedDataset(dataset, cameras, action_chunks(dataset, cfg.chunk_size), state_indices(meta, cfg.state_names))


def state_indices(meta: LeRobotDatasetMetadata, names: list[str]) -> list[int] | None:
    """Positions of ``names`` in the dataset's observation.state (None for all); an unknown name lists the known."""
    if not names:
        return None
    available = (meta.features.get("observation.state") or {}).get("names")
    if not isinstance(available, list):
        raise ValueError(
            f"Dataset {meta.repo_id!r} has no named observation.state entries to choose --dataset.state_names from; "
            "leave it empty to write the whole state."
        )
    missing = [name for name in names if name not in available]
    if missing:
        raise ValueError(
            f"Dataset {meta.repo_id!r} has no state entries {missing}; its observation.state holds {available}. "
            "Fix: choose --dataset.state_names among those."
        )
    return [available.index(name) for name in names]


def is_heldout(episode_index: int, holdout_every: int) -> bool:
    return holdout_every >= 2 and episode_index % holdout_every == holdout_every - 1


def split_frames(dataset: LeRobotDataset, cfg: AlignDataConfig) -> list[int]:
    """Frame indices of the episodes in ``cfg.split`` (every frame for split=all)."""
    if cfg.split == "all":
        return list(range(len(dataset)))
    episodes = dataset.meta.episodes
    keep = []
    for episode, start, stop in zip(
        episodes["episode_index"], episodes["dataset_from_index"], episodes["dataset_to_index"], strict=True
    ):
        if is_heldout(int(episode), cfg.holdout_every) == (cfg.split == "heldout"):
            keep.extend(range(int(start), int(stop)))
    return keep


def choose_frames(frames: list[list[int]], num_samples: int | None, seed: int) -> list[tuple[int, int]]:
    """(dataset index, frame index) pairs: all given frames, or ``num_samples`` drawn without replacement."""
    pairs = [(d, i) for d, indices in enumerate(frames) for i in indices]
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
    frames = choose_frames([split_frames(source.dataset, cfg) for source in opened], cfg.num_samples, cfg.seed)
    samples = [frame_sample(opened[d], frame, cfg) for d, frame in tqdm(frames, desc="alignment samples", unit="frame")]
    if fast is not None:
        attach_fast_tokens(samples, fast)
    return samples


def attach_fast_tokens(samples: list[dict], fast: FastTokenizer) -> None:
    """Store each sample's FAST tokens of its action chunk under ``fast_tokens``."""
    tokens = fast.encode(np.stack([s["actions"] for s in samples]))
    for sample, sample_tokens in zip(samples, tokens, strict=True):
        sample["fast_tokens"] = [int(t) for t in sample_tokens]


def frame_sample(source: OpenedDataset, index: int, cfg: AlignDataConfig) -> dict:
    dataset = source.dataset
    item = dataset[index]
    state = item["observation.state"].numpy() if cfg.include_state and "observation.state" in item else None
    if state is not None and source.state_indices is not None:
        state = state[source.state_indices]
    episode, frame = int(item["episode_index"]), int(item["frame_index"])
    return {
        "id": sample_id(dataset.repo_id, episode, frame),
        "repo_id": dataset.repo_id,
        "episode_index": episode,
        "frame_index": frame,
        "task": item["task"],
        "state": state,
        "images": [to_pil(item[key], cfg.image_size) for key in source.cameras],
        "actions": source.chunks[index].copy(),
        "action_names": action_names(dataset),
    }


def action_names(dataset: LeRobotDataset) -> list[str] | None:
    names = dataset.meta.features["action"].get("names")
    return list(names) if isinstance(names, list) else None
