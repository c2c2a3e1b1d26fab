"""The input format an MLLM was aligned on, recorded next to it so the VLA shows it the same.

`align sft` / `align grpo` write ``roboalign_format.json`` into the aligned model directory: the user-turn
template (``ALIGN_INSTRUCTION``, with ``{task}`` and ``{state}``) and the image size the cameras were shown at
(``--dataset.image_size``; ``null``: each camera at its dataset size). The VLA reads it by default
(``--policy.prompt_template`` / ``--policy.image_resolution`` unset) and falls back to the same defaults for a
backbone that was never aligned, so base and aligned backbones see the same prompt and image size. An explicit
``--policy.*`` value wins. The resolved values are written into the policy's config, so a checkpoint keeps them.
"""

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from transformers.utils import cached_file

from .align.data import ALIGN_INSTRUCTION, AlignDataConfig

logger = logging.getLogger(__name__)

ALIGNMENT_FORMAT_FILE = "roboalign_format.json"


@dataclass(frozen=True)
class AlignmentFormat:
    """How alignment rendered an observation: the user-turn template and the camera image size."""

    prompt_template: str = ALIGN_INSTRUCTION
    image_size: int | None = None  # square side the images were resized to; None: the dataset's own size
    include_state: bool = False  # the robot state was written into the prompt ({state})
    state_names: tuple[str, ...] = ()  # which of its entries (empty: all)

    @classmethod
    def from_data_config(cls, cfg: AlignDataConfig) -> "AlignmentFormat":
        names = tuple(cfg.state_names) if cfg.include_state else ()
        return cls(image_size=cfg.image_size, include_state=cfg.include_state, state_names=names)

    def save_pretrained(self, directory: str | Path) -> Path:
        path = Path(directory) / ALIGNMENT_FORMAT_FILE
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def from_pretrained(cls, name_or_path: str) -> "AlignmentFormat | None":
        """The record of a local directory or Hub model; None for a backbone that was never aligned (or unreachable:
        loading the backbone itself then reports it)."""
        try:
            file = cached_file(
                name_or_path,
                ALIGNMENT_FORMAT_FILE,
                _raise_exceptions_for_missing_entries=False,
                _raise_exceptions_for_connection_errors=False,
            )
        except (OSError, ValueError):
            return None
        if not file:
            return None
        record = json.loads(Path(file).read_text())
        return cls(**{**record, "state_names": tuple(record.get("state_names", ()))})


def camera_resolution(image_shapes: list[tuple[int, ...]]) -> tuple[int, int]:
    """The cameras' common (H, W): what "keep the dataset's size" means for the VLA."""
    sizes = {tuple(shape[-2:]) for shape in image_shapes}
    if len(sizes) != 1:
        raise ValueError(
            f"The cameras have different sizes {sorted(sizes)} and the backbone was aligned at each camera's own "
            "size, which one --policy.image_resolution cannot reproduce. Fix: pass --policy.image_resolution=[H,W] "
            "(and align with --dataset.image_size=S to show the MLLM the same square size)."
        )
    return sizes.pop()


def check_prompt_template(template: str) -> None:
    """Refuse a template the backbone could not fill, naming the usual cause: LeRobot's CLI reads each value as
    YAML, so ``--policy.prompt_template={task}`` arrives as the mapping ``{'task': None}``. Checked once the
    template is resolved, so that one read from the backbone's ``roboalign_format.json`` is checked too."""
    try:
        filled = template.format(task="\0", state="")
    except (KeyError, IndexError, ValueError) as error:
        raise ValueError(
            f"prompt_template {template!r} cannot be filled with the task ({type(error).__name__}: {error}). "
            "It is a str.format template with {task} and optionally {state}. On the command line the value is "
            "read as YAML: quote it inside the shell quotes, e.g. --policy.prompt_template=\"'Task: {task}.'\"."
        ) from None
    if "\0" not in filled:
        raise ValueError(f"prompt_template {template!r} has no {{task}}: the instruction would never reach the model.")


def resolve_vla_inputs(config) -> AlignmentFormat:
    """Fill ``config.prompt_template`` / ``config.image_resolution`` left unset from the backbone's record."""
    recorded = AlignmentFormat.from_pretrained(config.vlm_model_name)
    fmt = recorded or AlignmentFormat()
    if config.prompt_template is None:
        config.prompt_template = fmt.prompt_template
        if fmt.include_state:
            logger.warning(
                "%s was aligned with the robot state written into the prompt; the VLA gives the state to the "
                "action head and leaves {state} empty in the prompt.", config.vlm_model_name
            )
    if config.image_resolution is None:
        shapes = [feature.shape for feature in config.image_features.values()]
        size = fmt.image_size
        config.image_resolution = (size, size) if size else camera_resolution(shapes)
    config.image_resolution = tuple(config.image_resolution)
    check_prompt_template(config.prompt_template)
    return fmt
