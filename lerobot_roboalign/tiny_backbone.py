"""Tiny random checkpoints of real VLM architectures, for tests and the offline demo.

There is no model hub here, so tests cannot download Qwen2.5-VL. Instead this module writes a
checkpoint directory of the *same* architecture (config, random weights, a byte-level BPE
tokenizer trained locally on robot-instruction English, image and video processors, chat
template) that loads by path with ``AutoModelForImageTextToText.from_pretrained`` and
``AutoProcessor.from_pretrained``, exactly like a downloaded one. Special tokens carry the real
models' names so code written against the tiny model runs unchanged on the real one.

    roboalign make-tiny-backbone OUT_DIR --arch=qwen3_vl

torch, tokenizers and transformers are imported where used, so ``roboalign make-tiny-backbone --help`` is fast.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import draccus

if TYPE_CHECKING:
    from transformers import GenerationConfig, GPT2Tokenizer, PreTrainedModel, ProcessorMixin, Qwen2Tokenizer

BPE_VOCAB_SIZE = 2048
TEXT = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=4096)
HEAD_DIM = TEXT["hidden_size"] // TEXT["num_attention_heads"]
QWEN_VISION = dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=4,
                   out_hidden_size=TEXT["hidden_size"], spatial_merge_size=2, temporal_patch_size=2)
# Tokens every backbone knows as plain (non-special) added tokens, so decoding keeps them.
REASONING_TOKENS = ["<think>", "</think>", "<answer>", "</answer>"]
# Qwen2.5-VL / Qwen3-VL special tokens, in the real tokenizers' order (ids 151643..151656 there).
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]
SMOLVLM_NAMED_TOKENS = {
    "fake_image_token": "<fake_token_around_image>",
    "image_token": "<image>",
    "global_image_token": "<global-img>",
    "end_of_utterance_token": "<end_of_utterance>",
}
# The files save_pretrained writes; all present means a previous run completed.
CHECKPOINT_FILES = ("config.json", "model.safetensors", "tokenizer.json", "processor_config.json")

# Qwen2-VL / Qwen2.5-VL's own template (Qwen3-VL's differs only by not adding a default system turn).
QWEN_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' and default_system %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# SmolVLM2's own template.
SMOLVLM_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}"
    "{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}"
    "{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

# Extra vocabulary (scenes, kitchens, tools, motion, reasoning) so the BPE grows to about 2k tokens.
SCENE_WORDS = """
apple banana carrot tomato potato onion lemon orange grape peach pear cherry bread cheese butter
knife fork spoon ladle spatula whisk pan pot kettle toaster microwave oven stove sink faucet fridge
freezer cabinet shelf counter table chair stool desk lamp window curtain carpet floor wall ceiling
hammer screwdriver wrench pliers drill saw tape glue scissors ruler pencil marker notebook paper
keyboard mouse monitor laptop phone charger cable plug socket remote controller battery speaker
toy puzzle ball doll robot car truck train plane boat block brick lego tower bridge ramp tunnel
shirt sock shoe hat glove scarf jacket blanket pillow sheet towel napkin tissue bag backpack wallet
gripper finger palm wrist elbow shoulder base link joint motor encoder servo actuator sensor camera
trajectory waypoint velocity acceleration torque force position orientation pose rotation translation
quaternion euler angle radian degree millimeter centimeter meter second millisecond frequency sample
approach retreat align center hover descend ascend insert extract tighten loosen twist flip tilt
squeeze release hold carry transport deliver sort arrange organize clean fold unfold hang mount
observe perceive detect recognize localize estimate predict plan decide verify check confirm correct
because therefore however although unless until while before after during between among around
above below behind beside inside outside under over near far close distant high low front back
small large tiny huge narrow wide thin thick short long heavy light soft hard smooth rough shiny
transparent opaque empty full clean dirty wet dry hot cold open closed upright sideways stable
first second third fourth fifth next then finally again still already almost exactly roughly slowly
quickly carefully gently firmly steadily smoothly precisely safely immediately gradually
kitchen bedroom bathroom office garage garden laboratory warehouse factory workshop classroom
success failure attempt retry collision obstacle clearance margin tolerance threshold limit
observation action reward episode policy reasoning instruction language vision token sequence
cylinder sphere cone pyramid prism ring disk rod stick plank tray bin crate jar vase pitcher
should would could must might will can cannot need needs want wants seems appears looks remains
visible hidden occluded reachable graspable movable fixed attached detached balanced tipped
""".replace("\n", " ")


@dataclass
class TinyBackboneConfig:
    """``roboalign make-tiny-backbone``: where to write which architecture."""

    # Checkpoint directory to write (also accepted as the first positional argument).
    output_dir: Path | None = None
    # One of qwen2_5_vl, qwen3_vl, smolvlm.
    arch: str = "qwen2_5_vl"
    # Seed of the random weights.
    seed: int = 0


def robot_corpus() -> list[str]:
    """Robot-instruction and reasoning English, enough for a BPE of about 2k tokens."""
    verbs = ["pick up", "place", "push", "move", "lift", "grasp", "put", "stack", "open", "close",
             "rotate", "slide", "reach", "turn on", "turn off", "drop", "pour", "wipe"]
    colors = ["red", "blue", "green", "yellow", "black", "white", "orange", "purple"]
    objects = ["cube", "block", "bowl", "cup", "plate", "drawer", "door", "mug", "bottle", "sponge",
               "spoon", "can", "box", "lid", "button", "switch", "towel", "basket"]
    places = ["on the table", "in the bowl", "into the drawer", "to the left", "to the right",
              "on the plate", "in the basket", "next to the cup", "onto the stove", "forward"]
    reasoning = [
        "the gripper is open and above the {c} {o}, so I should move down and close the gripper",
        "first reach the {c} {o}, then grasp it, lift it and place it {p}",
        "the arm must move {d} by {n} millimeters to align the gripper with the {o}",
        "rotate joint {j} by {n} degrees and keep the wrist level",
        "the {o} is {p}; the end effector should approach from above before it grasps",
    ]
    directions = ["left", "right", "up", "down", "forward", "backward"]
    lines = []
    for i, verb in enumerate(verbs):
        for j, obj in enumerate(objects):
            color, place = colors[(i + j) % len(colors)], places[(i * 3 + j) % len(places)]
            lines.append(f"{verb} the {color} {obj} {place}")
            template = reasoning[(i + j) % len(reasoning)]
            thought = template.format(c=color, o=obj, p=place, d=directions[j % 6], n=(i * 37 + j * 11) % 500,
                                      j=j % 6 + 1)
            lines.append(f"<think>{thought}.</think><answer>{verb} {obj}</answer>")
    lines += [f"move the arm {d} {n} times, joint {n % 7} at {n / 10:.1f} rad" for n in range(400)
              for d in directions[n % 6:n % 6 + 1]]
    words = SCENE_WORDS.split()
    lines += [" ".join(words[i:i + 12]) for i in range(0, len(words), 6)]
    lines += [" ".join(f"{w.capitalize()} {w}s {w}ed {w}ing" for w in words[i:i + 6])
              for i in range(0, len(words), 6)]
    return lines


def train_bpe(vocab_size: int = BPE_VOCAB_SIZE) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Train a byte-level BPE with Qwen2's pre-tokenizer; returns (vocab, merges)."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>"], show_progress=False)
    tokenizer.train_from_iterator(robot_corpus(), trainer)
    model = json.loads(tokenizer.to_str())["model"]
    return model["vocab"], [tuple(pair) for pair in model["merges"]]


def qwen_tokenizer() -> Qwen2Tokenizer:
    from transformers import Qwen2Tokenizer

    vocab, merges = train_bpe()
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                               extra_special_tokens=QWEN_SPECIAL_TOKENS[1:])
    tokenizer.add_tokens(REASONING_TOKENS)
    return tokenizer


def smolvlm_tokenizer() -> GPT2Tokenizer:
    from transformers import GPT2Tokenizer

    vocab, merges = train_bpe()
    tokenizer = GPT2Tokenizer(vocab=vocab, merges=merges, unk_token="<|endoftext|>", bos_token="<|im_start|>",
                              eos_token="<end_of_utterance>", pad_token="<|im_end|>",
                              extra_special_tokens=SMOLVLM_NAMED_TOKENS)
    tokenizer.add_special_tokens({"extra_special_tokens": ["<|im_start|>", "<|im_end|>"]},
                                 replace_extra_special_tokens=False)
    tokenizer.add_tokens(REASONING_TOKENS)
    return tokenizer


def padded_vocab_size(tokenizer) -> int:
    """Like the real checkpoints, leave spare embedding rows beyond the tokenizer."""
    return (len(tokenizer) + 63) // 64 * 64


def qwen_token_ids(tokenizer) -> dict[str, int]:
    ids = tokenizer.convert_tokens_to_ids
    return dict(image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
                vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))


def qwen_generation_config(tokenizer) -> GenerationConfig:
    from transformers import GenerationConfig

    eos = [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    return GenerationConfig(eos_token_id=eos, pad_token_id=tokenizer.pad_token_id, do_sample=False)


def build_qwen2_5_vl() -> tuple[PreTrainedModel, ProcessorMixin]:
    """Qwen2.5-VL: patch 14, merge 2; a 224x224 image becomes 6x6 = 36 visual tokens."""
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    tokenizer = qwen_tokenizer()
    text = dict(TEXT, vocab_size=padded_vocab_size(tokenizer), pad_token_id=tokenizer.pad_token_id,
                bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [4, 6, 6]})
    vision = dict(QWEN_VISION, patch_size=14, window_size=112, fullatt_block_indexes=[1])
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **qwen_token_ids(tokenizer))
    model = Qwen2_5_VLForConditionalGeneration(config)
    pixels = dict(min_pixels=56 * 56, max_pixels=168 * 168)
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(patch_size=14, merge_size=2, **pixels),
        video_processor=Qwen2VLVideoProcessor(patch_size=14, merge_size=2, **pixels),
        tokenizer=tokenizer, chat_template=QWEN_CHAT_TEMPLATE.replace("default_system", "true"),
    )
    model.generation_config = qwen_generation_config(tokenizer)
    return model, processor


def build_qwen3_vl() -> tuple[PreTrainedModel, ProcessorMixin]:
    """Qwen3-VL: patch 16, merge 2, deepstack; a 224x224 image becomes 6x6 = 36 visual tokens."""
    from transformers import (
        Qwen2VLImageProcessor,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    tokenizer = qwen_tokenizer()
    text = dict(TEXT, vocab_size=padded_vocab_size(tokenizer), head_dim=HEAD_DIM,
                pad_token_id=tokenizer.pad_token_id,
                rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": [6, 5, 5],
                                 "mrope_interleaved": True})
    vision = dict(QWEN_VISION, patch_size=16, num_position_embeddings=256, deepstack_visual_indexes=[0])
    config = Qwen3VLConfig(text_config=text, vision_config=vision, **qwen_token_ids(tokenizer))
    model = Qwen3VLForConditionalGeneration(config)
    pixels = dict(min_pixels=64 * 64, max_pixels=192 * 192)
    half = dict(image_mean=[0.5] * 3, image_std=[0.5] * 3)
    processor = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(patch_size=16, merge_size=2, **pixels, **half),
        video_processor=Qwen3VLVideoProcessor(patch_size=16, merge_size=2, size={"shortest_edge": 64 * 64,
                                                                                 "longest_edge": 192 * 192}),
        tokenizer=tokenizer, chat_template=QWEN_CHAT_TEMPLATE.replace("default_system", "false"),
    )
    model.generation_config = qwen_generation_config(tokenizer)
    return model, processor


def build_smolvlm() -> tuple[PreTrainedModel, ProcessorMixin]:
    """SmolVLM2 layout as SmolVLA expects it: 512x512 images, patch 16, pixel-shuffle 4 -> 64 tokens."""
    from transformers import (
        GenerationConfig,
        SmolVLMConfig,
        SmolVLMForConditionalGeneration,
        SmolVLMImageProcessor,
        SmolVLMProcessor,
        SmolVLMVideoProcessor,
    )

    tokenizer = smolvlm_tokenizer()
    text = dict(TEXT, model_type="llama", vocab_size=padded_vocab_size(tokenizer), head_dim=HEAD_DIM,
                pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                rope_parameters={"rope_type": "default", "rope_theta": 1e5})
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  image_size=512, patch_size=16)
    config = SmolVLMConfig(text_config=text, vision_config=vision, scale_factor=4,
                           image_token_id=tokenizer.image_token_id, pad_token_id=tokenizer.pad_token_id)
    model = SmolVLMForConditionalGeneration(config)
    sizes = dict(size={"longest_edge": 512}, max_image_size={"longest_edge": 512})
    processor = SmolVLMProcessor(
        image_processor=SmolVLMImageProcessor(do_image_splitting=False, **sizes),
        video_processor=SmolVLMVideoProcessor(**sizes),
        tokenizer=tokenizer, image_seq_len=64, chat_template=SMOLVLM_CHAT_TEMPLATE,
    )
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id, do_sample=False)
    return model, processor


ARCHITECTURES: dict[str, tuple[str, Callable[[], tuple[PreTrainedModel, ProcessorMixin]]]] = {
    "qwen2_5_vl": ("qwen2_5_vl", build_qwen2_5_vl),
    "qwen3_vl": ("qwen3_vl", build_qwen3_vl),
    "smolvlm": ("smolvlm", build_smolvlm),
}


def is_complete(path: Path) -> bool:
    return all((path / name).is_file() for name in CHECKPOINT_FILES)


def check_existing(output_dir: Path, arch: str) -> bool:
    """True if ``output_dir`` holds a finished ``arch`` checkpoint; raise if it holds anything else."""
    if not output_dir.exists() or (output_dir.is_dir() and not any(output_dir.iterdir())):
        return False
    if not is_complete(output_dir):
        raise FileExistsError(f"{output_dir} exists but is not a complete tiny checkpoint (it lacks one of "
                              f"{CHECKPOINT_FILES}); delete it or pass another --output_dir.")
    model_type = json.loads((output_dir / "config.json").read_text())["model_type"]
    if model_type != ARCHITECTURES[arch][0]:
        raise FileExistsError(f"{output_dir} holds a {model_type!r} checkpoint, not {arch!r}; delete it or "
                              "pass another --output_dir.")
    return True


def make_tiny_backbone(output_dir: Path, arch: str = "qwen2_5_vl", seed: int = 0) -> Path:
    """Write a tiny random ``arch`` checkpoint to ``output_dir`` (kept if already complete) and return it."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"Unknown arch {arch!r}; choose one of {sorted(ARCHITECTURES)} (--arch=...).")
    output_dir = Path(output_dir)
    if check_existing(output_dir, arch):
        return output_dir
    import torch

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model, processor = ARCHITECTURES[arch][1]()
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; a checkpoint directory should not be
    try:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        if output_dir.exists():  # an empty directory: rename cannot replace it on every platform
            output_dir.rmdir()
        os.replace(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output_dir


def positional_to_flag(argv: list[str]) -> list[str]:
    """Accept ``make-tiny-backbone OUT_DIR ...`` as well as ``--output_dir=OUT_DIR``."""
    if argv and not argv[0].startswith("-"):
        return [f"--output_dir={argv[0]}", *argv[1:]]
    return argv


def main(argv: list[str] | None = None) -> Path:
    cfg = draccus.parse(config_class=TinyBackboneConfig, args=positional_to_flag(list(argv or [])))
    if cfg.output_dir is None:
        raise SystemExit("make-tiny-backbone: give the directory to write, e.g. "
                         "`roboalign make-tiny-backbone ./tiny-qwen --arch=qwen2_5_vl`.")
    path = make_tiny_backbone(cfg.output_dir, cfg.arch, cfg.seed)
    print(path)
    return path
