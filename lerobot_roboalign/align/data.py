"""Alignment samples from LeRobotDatasets: camera images at t, task, optional state, FAST tokens of a_t..a_t+H.

One sample per sampled frame, identified as ``repo_id/episode/frame`` so reasoning texts (``align reason``)
and the SFT / GRPO stages join on it across runs. The prompts live here too: SFT, GRPO and ``generate``
must show the MLLM exactly the same text, and the VLA never sees them.
"""

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from lerobot.datasets.dataset_metadata import LeRobotDatasetMetadata
from lerobot.datasets.lerobot_dataset import LeRobotDataset
from PIL import Image
from datasets import Dataset, concatenate_datasets

from lerobot_roboalign.action_vocab import ACTION_END, ACTION_START
from lerobot_roboalign.align.config import AlignDataConfig
from lerobot_roboalign.align.vqa import ROW_FEATURES, open_images
from lerobot_roboalign.dataset_mapping import missing_offline_dataset
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


def target_completion(reasoning: str, fast_tokens: list[int], vocabulary) -> str:
    """The full SFT target of a sample (what a completion cap must be able to hold)."""
    return answer_text(reasoning, vocabulary.format_span(fast_tokens))


def longest_target_tokens(samples, reasoning: dict[str, str], tokenizer, vocabulary, batch: int = 1024) -> int:
    """Tokens in the longest target completion (reasoning + markup + FAST span) over ``samples`` (in batches)."""
    longest = 0
    for start in range(0, len(samples), batch):
        texts = [target_completion(reasoning.get(s["id"], ""), s["fast_tokens"], vocabulary)
                 for s in samples[start : start + batch]]
        longest = max(longest, *(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]))
    return longest + 1  # + end of turn


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
    return resized(Image.fromarray(array), size)


def resized(image: Image.Image, size: int | None) -> Image.Image:
    return image.resize((size, size), Image.BICUBIC) if size else image


def episode_ends(dataset: LeRobotDataset) -> np.ndarray:
    """Per frame: the index one past the last frame of its episode (where its action chunk stops)."""
    ends = np.empty(len(dataset), dtype=np.int64)
    episodes = dataset.meta.episodes
    for start, stop in zip(episodes["dataset_from_index"], episodes["dataset_to_index"], strict=True):
        ends[int(start) : int(stop)] = int(stop)
    return ends


def chunks_at(actions: np.ndarray, ends: np.ndarray, frames: np.ndarray, chunk_size: int) -> np.ndarray:
    """Actions a_t..a_t+H-1 of ``frames``, padded past each episode's end with its last action."""
    steps = np.minimum(frames[:, None] + np.arange(chunk_size), ends[frames][:, None] - 1)
    return actions[steps]


def action_chunks(dataset: LeRobotDataset, chunk_size: int) -> np.ndarray:
    """Every frame's actions a_t..a_t+H-1, padded past its episode's end with the last action.

    The chunks ``delta_timestamps`` would give (LeRobot clamps each query to the episode), from the action column
    alone: a delta query through ``__getitem__`` formats whole rows, so it decodes one camera image per action.
    """
    actions = np.asarray(dataset.hf_dataset.with_format("numpy", columns=["action"])[:]["action"], dtype=np.float32)
    return chunks_at(actions, episode_ends(dataset), np.arange(len(actions)), chunk_size)


@dataclass
class OpenedDataset:
    """A LeRobotDataset with its chosen cameras and the few numbers per frame a sample needs (no image).

    About 60 bytes per frame: the images stay in the dataset's files until a sample's ``images`` is read.
    """

    dataset: LeRobotDataset
    cameras: list[str]
    chunk_size: int
    actions: np.ndarray  # (frames, action_dim)
    ends: np.ndarray  # (frames,): one past the last frame of each frame's episode
    episode_index: np.ndarray
    frame_index: np.ndarray
    task_index: np.ndarray
    state: np.ndarray | None  # (frames, chosen state entries) when the prompt shows the state
    action_names: list[str] | None
    stored_images: Dataset | None  # the camera columns as PIL images, when they are stored as images (not video)

    def chunk(self, frame: int) -> np.ndarray:
        return chunks_at(self.actions, self.ends, np.array([frame]), self.chunk_size)[0]

    def images(self, frame: int, size: int | None) -> list[Image.Image]:
        """The frame's camera images: decoded straight from the stored PNG/JPEG, or (video) by LeRobot."""
        if self.stored_images is None:
            item = self.dataset[frame]
            return [to_pil(item[camera], size) for camera in self.cameras]
        row = self.stored_images[frame]
        return [resized(row[camera].convert("RGB"), size) for camera in self.cameras]

    def task(self, frame: int) -> str:
        return self.dataset.meta.tasks.iloc[int(self.task_index[frame])].name


def open_dataset(repo_id: str, root: str | None, cfg: AlignDataConfig, fast: FastTokenizer | None) -> OpenedDataset:
    """Open a dataset and read its small columns (actions, indices, state); images are read per sample, later."""
    if message := missing_offline_dataset(repo_id, root, "--dataset.roots='[DIR]'"):
        raise FileNotFoundError(message)
    meta = LeRobotDatasetMetadata(repo_id, root=root)
    cameras = resolve_cameras(meta, cfg.cameras)
    if fast is not None:
        check_fast_matches(fast, meta, cfg.chunk_size)
    indices = state_indices(meta, cfg.state_names)
    dataset = LeRobotDataset(repo_id, root=root, return_uint8=True)
    with_state = cfg.include_state and "observation.state" in meta.features
    names = ["action", "episode_index", "frame_index", "task_index"] + (["observation.state"] * with_state)
    columns = dataset.hf_dataset.with_format("numpy", columns=names)[:]
    state = np.asarray(columns["observation.state"], dtype=np.float32) if with_state else None
    return OpenedDataset(
        dataset=dataset,
        cameras=cameras,
        chunk_size=cfg.chunk_size,
        actions=np.asarray(columns["action"], dtype=np.float32),
        ends=episode_ends(dataset),
        episode_index=np.asarray(columns["episode_index"], dtype=np.int64),
        frame_index=np.asarray(columns["frame_index"], dtype=np.int64),
        task_index=np.asarray(columns["task_index"], dtype=np.int64),
        state=state[:, indices] if state is not None and indices is not None else state,
        action_names=action_names(dataset),
        stored_images=dataset.hf_dataset.with_format(None, columns=cameras)
        if all(meta.features[camera]["dtype"] == "image" for camera in cameras) else None,
    )


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


def split_frames(dataset: LeRobotDataset, cfg: AlignDataConfig) -> np.ndarray:
    """Frame indices of the episodes in ``cfg.split`` (every frame for split=all)."""
    if cfg.split == "all":
        return np.arange(len(dataset))
    episodes = dataset.meta.episodes
    keep = [
        np.arange(int(start), int(stop))
        for episode, start, stop in zip(
            episodes["episode_index"], episodes["dataset_from_index"], episodes["dataset_to_index"], strict=True
        )
        if is_heldout(int(episode), cfg.holdout_every) == (cfg.split == "heldout")
    ]
    return np.concatenate(keep) if keep else np.arange(0)


def choose_frames(frames: list[np.ndarray], num_samples: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(dataset index, frame index) arrays: all given frames, or ``num_samples`` drawn without replacement."""
    sources = np.concatenate([np.full(len(f), d, dtype=np.int64) for d, f in enumerate(frames)])
    indices = np.concatenate([np.asarray(f, dtype=np.int64) for f in frames])
    if num_samples is None or num_samples >= len(indices):
        return sources, indices
    picks = np.sort(np.random.default_rng(seed).choice(len(indices), size=num_samples, replace=False))
    return sources[picks], indices[picks]


SAMPLE_KEYS = ("id", "repo_id", "episode_index", "frame_index", "task", "state", "images", "actions", "action_names")


class AlignSamples(Sequence):
    """Alignment samples as references (dataset, frame): nothing per sample is built until it is read.

    ``samples[i]`` is a read-only mapping with the keys of ``SAMPLE_KEYS`` (and ``fast_tokens`` once a FAST
    tokenizer is attached); each value is computed when read, the camera images decoded from the dataset only
    when ``images`` is, so a training data loader decodes each image when its batch needs it and drops it after.
    """

    def __init__(self, sources: list[OpenedDataset], source_of: np.ndarray, frame_of: np.ndarray,
                 image_size: int | None, fast: FastTokenizer | None = None):
        self.sources, self.source_of, self.frame_of = sources, source_of, frame_of
        self.image_size, self.fast = image_size, fast

    def __len__(self) -> int:
        return len(self.frame_of)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return AlignSamples(self.sources, self.source_of[index], self.frame_of[index], self.image_size, self.fast)
        if not -len(self) <= index < len(self):
            raise IndexError(f"sample {index} of {len(self)}")
        return AlignSample(self, index % len(self))

    def __add__(self, other) -> list:
        return [*self, *other]  # views of both, as a list of samples would concatenate

    def select(self, indices) -> "AlignSamples":
        indices = np.asarray(indices, dtype=np.int64)
        return AlignSamples(self.sources, self.source_of[indices], self.frame_of[indices], self.image_size, self.fast)

    def keys(self) -> tuple[str, ...]:
        return SAMPLE_KEYS + ("fast_tokens",) * (self.fast is not None)

    def value(self, index: int, key: str):
        """Field ``key`` of sample ``index``, read from its dataset now."""
        source, frame = self.sources[self.source_of[index]], int(self.frame_of[index])
        match key:
            case "id":
                return sample_id(source.dataset.repo_id, int(source.episode_index[frame]), int(source.frame_index[frame]))
            case "repo_id":
                return source.dataset.repo_id
            case "episode_index":
                return int(source.episode_index[frame])
            case "frame_index":
                return int(source.frame_index[frame])
            case "task":
                return source.task(frame)
            case "state":
                return None if source.state is None else source.state[frame].copy()
            case "images":
                return source.images(frame, self.image_size)
            case "actions":
                return source.chunk(frame)
            case "action_names":
                return source.action_names
            case "fast_tokens" if self.fast is not None:
                return [int(t) for t in self.fast.encode(source.chunk(frame)[None])[0]]
        raise KeyError(key)


class AlignSample(Mapping):
    """One sample of ``AlignSamples``: a view whose values are read on access (``dict(sample)`` reads them all)."""

    __slots__ = ("_samples", "_index")

    def __init__(self, samples: AlignSamples, index: int):
        self._samples, self._index = samples, index

    def __getitem__(self, key: str):
        return self._samples.value(self._index, key)

    def __iter__(self):
        return iter(self._samples.keys())

    def __len__(self) -> int:
        return len(self._samples.keys())


def load_samples(cfg: AlignDataConfig, fast: FastTokenizer | None = None) -> AlignSamples:
    """Alignment samples (id, task, images, state, actions; fast_tokens when ``fast`` is given), read lazily."""
    if not cfg.repo_ids:
        raise ValueError("No dataset given: pass --dataset.repo_ids='[user/name]' (and --dataset.roots for local ones).")
    roots = cfg.roots or [None] * len(cfg.repo_ids)
    opened = [open_dataset(repo_id, root, cfg, fast) for repo_id, root in zip(cfg.repo_ids, roots)]
    source_of, frame_of = choose_frames([split_frames(source.dataset, cfg) for source in opened], cfg.num_samples, cfg.seed)
    return AlignSamples(opened, source_of, frame_of, cfg.image_size, fast)


def attach_fast_tokens(samples: AlignSamples, fast: FastTokenizer) -> None:
    """Give each sample ``fast_tokens``: the FAST tokens of its action chunk, encoded when read."""
    samples.fast = fast


def frame_sample(source: OpenedDataset, index: int, cfg: AlignDataConfig) -> dict:
    """Frame ``index`` of ``source`` as a plain sample dict, images decoded."""
    return dict(AlignSamples([source], np.zeros(1, dtype=np.int64), np.array([index]), cfg.image_size)[0])


def action_names(dataset: LeRobotDataset) -> list[str] | None:
    names = dataset.meta.features["action"].get("names")
    return list(names) if isinstance(names, list) else None


class SFTRows:
    """The ``set_transform`` of the SFT dataset: prompt, completion and decoded images of the referenced rows.

    An action row references a sample (its reasoning text stored beside it), a VQA row its conversation and
    image files; the trainer's data loader calls this per batch, so images live only while their batch does.
    """

    def __init__(self, samples: AlignSamples, vocabulary):
        self.samples, self.vocabulary = samples, vocabulary

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        rows = [self.row(*values) for values in zip(
            batch["sample"], batch["reasoning"], batch["vqa_prompt"], batch["vqa_completion"], batch["image_paths"],
            strict=True,
        )]
        return {key: [row[key] for row in rows] for key in ("prompt", "completion", "images")}

    def row(self, index: int, reasoning: str, vqa_prompt: list, vqa_completion: list, paths: list[str]) -> dict:
        if index < 0:
            return {"prompt": vqa_prompt, "completion": vqa_completion, "images": open_images(paths)}
        sample = self.samples[index]
        target = answer_text(reasoning, self.vocabulary.format_span(sample["fast_tokens"]))
        return {
            "prompt": align_messages(sample["task"], sample["state"]),
            "completion": [{"role": "assistant", "content": target}],
            "images": sample["images"],
        }


def sft_dataset(samples: AlignSamples, reasoning: list[str], vocabulary, vqa: Dataset) -> Dataset:
    """SFT rows (action samples, then the ``vqa`` rows of ``vqa.vqa_references``) as references, built when read."""
    actions = len(samples)
    references = Dataset.from_dict({
        "sample": list(range(actions)),
        "reasoning": list(reasoning),
        "vqa_prompt": [[]] * actions,
        "vqa_completion": [[]] * actions,
        "image_paths": [[]] * actions,
    }, features=ROW_FEATURES)
    return concatenate_datasets([references, vqa]).with_transform(SFTRows(samples, vocabulary))


class GRPORows:
    """The ``set_transform`` of the GRPO dataset: prompt, decoded images and target FAST tokens of each sample."""

    def __init__(self, samples: AlignSamples):
        self.samples = samples

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        samples = [self.samples[index] for index in batch["sample"]]
        return {
            "prompt": [align_messages(s["task"], s["state"]) for s in samples],
            "images": [s["images"] for s in samples],
            "fast_tokens": [s["fast_tokens"] for s in samples],
        }


def grpo_dataset(samples: AlignSamples) -> Dataset:
    """GRPO prompts as sample references, built when TRL's data loader reads them."""
    return Dataset.from_dict({"sample": list(range(len(samples)))}).with_transform(GRPORows(samples))
