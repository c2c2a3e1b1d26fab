"""The check that alignment and the VLA show each backbone the same input (docs/study.md, "Prompt and image").

Both sides are rendered by the code that renders them in training: alignment's user turn (``align_messages``,
images put in front of it as TRL does) and the VLA's (``VLMBackbone.build_prompts`` with the template the policy
resolves from the backbone's ``roboalign_format.json``), through the backbone's own chat template.
"""

from pathlib import Path
from types import SimpleNamespace


def alignment_prompt(processor, fmt, task: str, state, num_images: int) -> str:
    """The chat-formatted user turn SFT and GRPO show the MLLM for ``task``."""
    from PIL import Image
    from trl.data_utils import prepare_multimodal_messages

    from ..align.data import align_messages

    images = [Image.new("RGB", (8, 8))] * num_images
    messages = prepare_multimodal_messages(align_messages(task, state if fmt.include_state else None), images)
    for block in messages[0]["content"]:
        block.pop("image", None)  # the placeholder, as the VLA's turn has it (the pixels are not in the text)
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def vla_prompt(processor, fmt, task: str, num_images: int) -> str:
    """The chat-formatted user turn the VLA's backbone builds for ``task`` (the policy's own method)."""
    from ..backbone import VLMBackbone

    return VLMBackbone.build_prompts(SimpleNamespace(processor=processor, prompt_template=fmt.prompt_template),
                                     [task], num_images)[0]  # fmt: skip


def dataset_inputs(root: Path) -> tuple[list[str], int, int]:
    """A LeRobotDataset's instructions, number of cameras and state size (what the prompts are rendered for)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata

    meta = LeRobotDatasetMetadata(repo_id="local/prompt_check", root=root)
    return list(meta.tasks.index), len(meta.camera_keys), meta.features["observation.state"]["shape"][0]


def check_prompts(
    backbones: dict[str, str], tasks: list[str], cameras: int, state_size: int, image_size: int
) -> dict:
    """Every row's VLA prompt and image size equal to its alignment's, and the same for every row, on each of the
    VLA dataset's instructions; a ValueError naming the row and both prompts otherwise."""
    import numpy as np
    from transformers import AutoProcessor

    from ..alignment_format import AlignmentFormat

    state = np.zeros(state_size, dtype=np.float32)
    prompts: dict[str, list[str]] = {}
    for row, path in backbones.items():
        fmt = AlignmentFormat.from_pretrained(path) or AlignmentFormat()
        if fmt.image_size not in (None, image_size):
            raise ValueError(f"row {row}: {path} was aligned at {fmt.image_size}px, the VLA sees {image_size}px; "
                             "align with --dataset.image_size equal to the recording's.")  # fmt: skip
        processor = AutoProcessor.from_pretrained(path)
        prompts[row] = [vla_prompt(processor, fmt, task, cameras) for task in tasks]
        aligned = [alignment_prompt(processor, fmt, task, state, cameras) for task in tasks]
        if aligned != prompts[row]:
            raise ValueError(
                f"row {row}: the VLA's prompt differs from the one {path} was aligned on:\n  aligned: "
                f"{aligned[0]!r}\n  VLA:     {prompts[row][0]!r}\nThe VLA leaves {{state}} empty: run the study "
                "with --state_text=false (alignment without the state), or give both the same template."
            )
    first = next(iter(prompts.values()))
    differing = [row for row, rendered in prompts.items() if rendered != first]
    if differing:
        raise ValueError(f"rows {differing} show the VLA another prompt than {next(iter(prompts))}: every row must "
                         "read the same prompt; align every backbone with the same format.")  # fmt: skip
    return {"tasks": tasks, "prompt": first[0], "image_size": image_size, "rows": list(backbones)}
