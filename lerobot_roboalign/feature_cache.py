"""A frozen backbone's features cached on disk for head training (``--policy.cache_features=true``).

Why: with a frozen backbone a dataset frame's features are the same every epoch, and the backbone is most of a
training step; reading them back from disk leaves only the head to train. Each frame is stored once, unpadded,
exactly as the backbone returned it (its dtype: bfloat16 bits stay bfloat16 bits), so a read batch re-padded the way
the processor pads gives the head the same numbers and the same losses.

One directory per fingerprint (the backbone's weights, layer, dtype, device, prompt, chat template and image
processing, cameras, dataset): memory-mapped files with a slot per dataset frame (LeRobot's global ``index``), filled
as frames are first seen. Host RAM holds only the batch being read; the files are page cache the kernel may drop.
Each slot keeps a checksum of the frame's pixels and its task text: a frame that comes back different (image
augmentation, or a changed dataset) is refused instead of trained on stale features.
"""

import functools
import hashlib
import json
import logging
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import transformers
import yaml
from lerobot.configs import parser
from torch import Tensor

from .backbone import VLMBackbone

logger = logging.getLogger(__name__)
DEFAULT_CACHE_DIR = Path("~/.cache/lerobot_roboalign/features")
FORMAT_VERSION = 1
INFO_FILE = "info.json"
# Per frame: token count (0: not cached yet), task text hash, two weighted pixel sums (float64).
RECORD = np.dtype([("length", "<i4"), ("task", "<u8"), ("pixels", "<f8", (2,))])
PIXEL_RTOL = 1e-9  # float64 sums of the same pixels agree far closer; one pixel changed by 1/255 moves them ~1e-6
AUGMENTATION_FLAG = "--dataset.image_transforms.enable"


def cli_image_transforms_enabled(args: list[str] | None = None) -> bool:
    """Whether the running ``lerobot-train`` augments images (its flag, or its ``--config_path`` train config)."""
    raw = parser.parse_arg("dataset.image_transforms.enable", args)
    if raw is not None:
        return yaml.safe_load(raw) is True
    config_path = parser.parse_arg("config_path", args)
    if config_path and Path(config_path).is_file() and Path(config_path).suffix == ".json":
        dataset = json.loads(Path(config_path).read_text()).get("dataset") or {}
        return bool((dataset.get("image_transforms") or {}).get("enable"))
    return False


def refuse_image_transforms(args: list[str] | None = None) -> None:
    """Augmented pixels change every epoch, so features cached from one epoch would be wrong in the next."""
    if cli_image_transforms_enabled(args):
        raise ValueError(
            f"--policy.cache_features=true with image augmentation ({AUGMENTATION_FLAG}=true): augmented pixels "
            "differ every epoch, so cached backbone features would not be the ones of the images trained on. Fix: "
            f"pass {AUGMENTATION_FLAG}=false, or --policy.cache_features=false to keep augmentation."
        )


def task_hash(task: str) -> int:
    return int.from_bytes(hashlib.blake2b(task.encode(), digest_size=8).digest(), "little")


def pixel_checksums(images: list[Tensor]) -> np.ndarray:
    """(B, 2) float64: each frame's pixels of every camera summed with two fixed pseudo-random weightings.

    Computed where the images are (a GPU batch is not copied to the host), in float64 (on the CPU for MPS, which has
    none). Colour jitter, crops and shifts all move them; bit-identical pixels give the same sums.
    """
    flat = torch.cat([image.flatten(1) for image in images], dim=1)
    device = flat.device if flat.device.type != "mps" else torch.device("cpu")
    pixels = flat.to(device=device, dtype=torch.float64)
    return torch.stack([(pixels * w).sum(dim=1) for w in _checksum_weights(flat.shape[1], device)], dim=1).cpu().numpy()


@functools.lru_cache(maxsize=4)
def _checksum_weights(size: int, device: torch.device) -> Tensor:
    """(2, size) float64 weights in [0.5, 1.5), the same in every process (seeded by the size)."""
    generator = torch.Generator().manual_seed(size)
    return (0.5 + torch.rand(2, size, generator=generator, dtype=torch.float64)).to(device)


def weights_checksum(module: torch.nn.Module) -> str:
    """sha256 of every parameter's and buffer's name, shape, dtype and bytes, as loaded.

    Any path, format or copy of the same weights agrees, and a changed byte changes it. GPU weights are copied to the
    host in chunks (a 7B in bfloat16: 15 GB, some seconds once per run).
    """
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}\n".encode())
            for chunk in tensor.detach().contiguous().flatten().view(torch.uint8).split(1 << 26):
                digest.update(chunk.cpu().numpy().data)
    return digest.hexdigest()


def backbone_fingerprint(backbone: VLMBackbone, cameras: list[str], device: str, dataset: dict) -> dict:
    """Everything that decides a frame's cached features, except the frame itself (checked per frame)."""
    shapes = tuple((3, *backbone.image_resolution) for _ in cameras)
    return {
        "format": FORMAT_VERSION,
        "architecture": type(backbone.vlm).__name__,
        "weights": weights_checksum(backbone),
        "dtype": str(backbone.dtype),
        "device": torch.device(device).type,
        "image_resolution": list(backbone.image_resolution),
        "prompt_template": backbone.prompt_template,
        "prompt_probe": backbone.prompt_tokens("{task}", shapes)["input_ids"].tolist(),  # chat template, tokenizer
        "image_processor": backbone.processor.image_processor.to_dict(),
        "cameras": list(cameras),
        "dataset": dataset,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }


def fingerprint_key(fingerprint: dict) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _storage(dtype: torch.dtype) -> np.dtype:
    """numpy has no bfloat16: 2-byte floats are stored as their raw bits."""
    return np.dtype(np.float32) if dtype == torch.float32 else np.dtype(np.int16)


class FeatureCache:
    """One fingerprint's memory-mapped features: ``num_frames`` slots of up to ``slot_length`` tokens each."""

    def __init__(self, directory: Path):
        self.directory = directory
        info = json.loads((directory / INFO_FILE).read_text())
        self.num_frames, self.slot_length, self.dim = info["num_frames"], info["slot_length"], info["dim"]
        self.dtype = getattr(torch, info["dtype"].removeprefix("torch."))
        storage = _storage(self.dtype)
        self.records = np.memmap(directory / "frames.bin", RECORD, "r+", shape=(self.num_frames,))
        self.image_tokens = np.memmap(directory / "image_tokens.bin", np.uint8, "r+",
                                      shape=(self.num_frames, self.slot_length))  # fmt: skip
        self.features = np.memmap(directory / "features.bin", storage, "r+",
                                  shape=(self.num_frames, self.slot_length, self.dim))  # fmt: skip

    @classmethod
    def open(
        cls, root: Path, fingerprint: dict, num_frames: int, slot_length: int, dim: int, dtype: torch.dtype
    ) -> "FeatureCache":
        """The cache of ``fingerprint`` under ``root``, created (sparse files: disk fills as frames are written)."""
        directory = Path(root).expanduser() / fingerprint_key(fingerprint)
        directory.mkdir(parents=True, exist_ok=True)
        with _locked(directory, exclusive=True):
            if not (directory / INFO_FILE).is_file():
                storage = _storage(dtype)
                for name, shape, kind in (("frames.bin", (num_frames,), RECORD),
                                          ("image_tokens.bin", (num_frames, slot_length), np.uint8),
                                          ("features.bin", (num_frames, slot_length, dim), storage)):  # fmt: skip
                    with open(directory / name, "wb") as file:
                        file.truncate(int(np.prod(shape)) * np.dtype(kind).itemsize)
                info = dict(num_frames=num_frames, slot_length=slot_length, dim=dim, dtype=str(dtype),
                            fingerprint=fingerprint)  # fmt: skip
                (directory / INFO_FILE).write_text(json.dumps(info, indent=1, default=str))
                gib = num_frames * slot_length * dim * storage.itemsize / 2**30
                logger.info("Feature cache %s: %d frames x %d tokens x %d (%s), up to %.2f GiB on disk.",
                            directory, num_frames, slot_length, dim, dtype, gib)  # fmt: skip
        return cls(directory)

    def fetch(
        self, index: Tensor, images: list[Tensor], tasks: list[str], left_padded: bool,
        compute: Callable[[], tuple[Tensor, Tensor, Tensor]],
    ) -> tuple[tuple[Tensor, Tensor, Tensor], bool]:
        """(features, mask, image-token mask) of a batch, and whether they were read from the cache.

        A batch with any frame not cached yet runs ``compute`` (the backbone) for all of it, as without a cache,
        and stores the new frames: the first epoch trains on exactly the features it would have without the cache.
        """
        frames = index.detach().cpu().long().numpy()
        if frames.min() < 0 or frames.max() >= self.num_frames:
            raise IndexError(
                f"Frame index {int(frames.max())} is outside the feature cache's {self.num_frames} frames "
                f"({self.directory}): the batch comes from another dataset than the policy was built for. Fix: "
                "train on the dataset given to lerobot-train (--dataset.repo_id/--dataset.root)."
            )
        checksums, hashes = pixel_checksums(images), np.array([task_hash(t) for t in tasks], dtype=np.uint64)
        with _locked(self.directory, exclusive=False):
            stored = self.records[frames].copy()
            if (stored["length"] > 0).all():
                self._check_inputs(frames, stored, checksums, hashes, tasks)
                return self._read(frames, stored["length"], left_padded, images[0].device), True
        outputs = compute()
        with _locked(self.directory, exclusive=True):
            stored = self.records[frames].copy()
            self._check_inputs(frames, stored, checksums, hashes, tasks)
            self._write(frames, stored["length"] == 0, outputs, checksums, hashes)
        return outputs, False

    def _check_inputs(
        self, frames: np.ndarray, stored: np.ndarray, checksums: np.ndarray, hashes: np.ndarray, tasks: list[str]
    ) -> None:
        """Refuse a cached frame whose pixels or task text differ from what its features were computed on."""
        cached = stored["length"] > 0
        same_pixels = np.isclose(stored["pixels"], checksums, rtol=PIXEL_RTOL, atol=0).all(axis=1)
        same_task = stored["task"] == hashes
        for i in np.flatnonzero(cached & ~(same_pixels & same_task)):
            what = "pixels" if not same_pixels[i] else f"task text ({tasks[i]!r})"
            raise ValueError(
                f"Dataset frame {int(frames[i])}: its {what} differ from those its cached backbone features were "
                f"computed from ({self.directory}). Image augmentation changes pixels every epoch: pass "
                f"{AUGMENTATION_FLAG}=false (or --policy.cache_features=false to keep augmentation). If the dataset "
                f"itself changed (re-recorded in place), delete {self.directory}."
            )

    def _read(self, frames: np.ndarray, lengths: np.ndarray, left_padded: bool, device) -> tuple[Tensor, ...]:
        """The batch padded as the processor pads it (same length, same side); padding is masked, zeros here."""
        batch, longest = len(frames), int(lengths.max())
        features = torch.zeros(batch, longest, self.dim, dtype=self.dtype)
        mask = torch.zeros(batch, longest, dtype=torch.bool)
        image_tokens = torch.zeros(batch, longest, dtype=torch.bool)
        for row, (frame, length) in enumerate(zip(frames, lengths, strict=True)):
            span = slice(longest - length, longest) if left_padded else slice(0, length)
            features[row, span] = torch.from_numpy(np.array(self.features[frame, :length])).view(self.dtype)
            image_tokens[row, span] = torch.from_numpy(self.image_tokens[frame, :length] > 0)
            mask[row, span] = True
        return features.to(device), mask.to(device), image_tokens.to(device)

    def _write(
        self, frames: np.ndarray, new: np.ndarray, outputs: tuple[Tensor, Tensor, Tensor], checksums: np.ndarray,
        hashes: np.ndarray,
    ) -> None:
        """Store each new frame's unpadded tokens; its record last, so an interrupted write leaves it uncached."""
        features, mask, image_tokens = (t.detach().cpu() for t in outputs)
        if features.dtype != self.dtype:
            raise TypeError(f"Backbone features are {features.dtype} but the cache at {self.directory} holds "
                            f"{self.dtype}; its fingerprint should have differed (please report).")  # fmt: skip
        for row in np.flatnonzero(new):
            frame, tokens = frames[row], mask[row]
            length = int(tokens.sum())
            if length > self.slot_length:
                raise ValueError(
                    f"Dataset frame {int(frame)} has {length} prompt tokens, more than the {self.slot_length} of the "
                    "longest task in the dataset's metadata (meta/tasks.parquet). Fix: train on a dataset whose "
                    "frames' tasks are listed in its metadata, or --policy.cache_features=false."
                )
            values = features[row, tokens]
            values = values if self.dtype == torch.float32 else values.view(torch.int16)
            self.features[frame, :length] = values.numpy()
            self.image_tokens[frame, :length] = image_tokens[row, tokens].numpy()
            self.records["task"][frame] = hashes[row]
            self.records["pixels"][frame] = checksums[row]
            self.records["length"][frame] = length


def slot_length(backbone: VLMBackbone, tasks: list[str], num_cameras: int) -> int:
    """Prompt tokens (text and image) of the dataset's longest task: every frame fits in a slot this long."""
    shapes = tuple((3, *backbone.image_resolution) for _ in range(num_cameras))
    return max(len(backbone.prompt_tokens(task, shapes)["input_ids"]) for task in tasks)


@contextmanager
def _locked(directory: Path, exclusive: bool):
    """Several lerobot-train runs (head seeds) may share one cache: writes exclusive, reads shared. POSIX file locks
    (imported here: the policy itself must import where there are none)."""
    import fcntl

    with open(directory / "lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
