"""Observations as robots and users really send them, made what the backbone expects or refused.

The backbone wants, per camera, a float (B, 3, H, W) image in [0, 1] and one instruction per
sample. This preprocessor step runs before any model code and either converts (documented,
unambiguous cases, logged once per key) or raises an error naming the key, what was received
and the fix:

* uint8 images (0-255) are divided by 255;
* float images whose finite values lie in [0, 255] with a maximum above 1 are taken as 0-255
  and divided by 255 (a [0, 1] image never exceeds 1; otherwise the backbone would see white);
* channels-last (B, H, W, 3) images are permuted to (B, 3, H, W);
* one instruction for a batch of B observations is repeated B times;

and refused: negative or > 255 float values (already normalised?), other channel counts,
other ranks, and a number of instructions that is neither 1 nor B. NaN values pass through
on purpose: a NaN frame mid-rollout makes a non-finite chunk, which the policy drops so the
arm holds (safety.py, rtc.py), instead of stopping the rollout.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from lerobot.configs import PipelineFeatureType, PolicyFeature
from lerobot.lerobot_types import TransitionKey
from lerobot.processor import ProcessorStep, ProcessorStepRegistry

logger = logging.getLogger(__name__)
RANGE_SLACK = 1e-3  # resampling can overshoot [0, 1] slightly


def _channels_first(key: str, image: torch.Tensor) -> torch.Tensor:
    if image.ndim != 4:
        raise ValueError(
            f"'{key}' has shape {tuple(image.shape)}; expected (B, 3, H, W) or (3, H, W). "
            "Fix: send one RGB image per camera and sample."
        )
    if image.shape[1] == 3:
        return image
    if image.shape[-1] == 3:
        return image.permute(0, 3, 1, 2)
    raise ValueError(
        f"'{key}' has shape {tuple(image.shape)}: neither channels-first (B, 3, H, W) nor channels-last "
        "(B, H, W, 3). Fix: convert the camera frames to RGB (3 channels)."
    )


def _unit_range(key: str, image: torch.Tensor) -> tuple[torch.Tensor, str | None]:
    """The image in [0, 1], and a note if it had to be converted."""
    if image.dtype == torch.uint8:
        return image.float() / 255, "uint8 0-255 -> float / 255"
    if not image.is_floating_point():
        raise TypeError(f"'{key}' has dtype {image.dtype}. Fix: send uint8 (0-255) or float (0-1) images.")
    finite = image[torch.isfinite(image)]
    if finite.numel() == 0:
        return image, None  # all NaN: the policy's non-finite guard holds the arm
    low, high = finite.min().item(), finite.max().item()
    if low >= -RANGE_SLACK and high <= 1 + RANGE_SLACK:
        return image, None
    if low >= 0 and high <= 255:
        return image / 255, f"float values in [{low:.3g}, {high:.3g}] taken as 0-255 -> / 255"
    raise ValueError(
        f"'{key}' has values in [{low:.3g}, {high:.3g}]; RoboAlign expects raw camera images in [0, 1] "
        "(or 0-255). Fix: send the un-normalised image (the backbone's processor normalises it)."
    )


def _tasks(task: Any, batch_size: int) -> list[str] | Any:
    if task is None or isinstance(task, str):
        return [task] * batch_size if isinstance(task, str) else task
    tasks = list(task)
    if len(tasks) == 1 and batch_size > 1:
        return tasks * batch_size
    if len(tasks) != batch_size:
        raise ValueError(
            f"'task' has {len(tasks)} instructions {tasks[:3]} for a batch of {batch_size} observation(s). "
            "Fix: pass one instruction per sample (a list of length B), or a single string for all."
        )
    return tasks


@ProcessorStepRegistry.register(name="roboalign_observation_check")
@dataclass
class RoboAlignObservationCheckStep(ProcessorStep):
    """Convert or refuse camera images and instructions before normalisation and the model (see module doc)."""

    cameras: list[str] = field(default_factory=list)
    _noted: set[str] = field(default_factory=set, init=False, repr=False)

    def __call__(self, transition: dict) -> dict:
        observation = dict(transition.get(TransitionKey.OBSERVATION) or {})
        batch_size = None
        for key in self.cameras:
            if key not in observation or not isinstance(observation[key], torch.Tensor):
                continue  # validate_batch names missing cameras
            image = observation[key]
            image = image[None] if image.ndim == 3 else image
            channels_last = image.ndim == 4 and image.shape[1] != 3 and image.shape[-1] == 3
            image, note = _unit_range(key, _channels_first(key, image))
            notes = [n for n in (note, "channels-last (B, H, W, 3) -> (B, 3, H, W)" if channels_last else None) if n]
            self._note(key, ", ".join(notes))
            observation[key] = image.contiguous()
            batch_size = image.shape[0]
        transition = dict(transition)
        transition[TransitionKey.OBSERVATION] = observation
        complementary = dict(transition.get(TransitionKey.COMPLEMENTARY_DATA) or {})
        if batch_size is not None and "task" in complementary:
            complementary["task"] = _tasks(complementary["task"], batch_size)
            transition[TransitionKey.COMPLEMENTARY_DATA] = complementary
        return transition

    def _note(self, key: str, note: str | None) -> None:
        if note and key not in self._noted:
            self._noted.add(key)
            logger.info("RoboAlign observation '%s': converted (%s).", key, note)

    def get_config(self) -> dict[str, Any]:
        return {"cameras": self.cameras}

    def transform_features(
        self, features: dict[PipelineFeatureType, dict[str, PolicyFeature]]
    ) -> dict[PipelineFeatureType, dict[str, PolicyFeature]]:
        return features
