"""The VLM backbone: any Hugging Face image-text-to-text model, cut at one layer.

The action head reads the hidden states of ``vlm_layer`` (the paper and GR00T N1.5 use a
middle layer: later layers specialise in next-token prediction). Layers above it and the
LM head are dropped at load time, so they cost neither memory nor compute. The prompt is
built with the backbone's own processor and chat template from the camera images and the
user-turn template; by default both the template and the image size are the ones the MLLM
was aligned on (``alignment_format.py``), so an aligned RoboAlign MLLM sees the VLA's
observations as it saw them in alignment (without the state text and action answer).
"""

import os
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from huggingface_hub import try_to_load_from_cache
from torch import Tensor, nn
from transformers import AutoModelForImageTextToText, AutoProcessor

TOKEN_CACHE_SIZE = 1024  # prompts (instruction, image shapes) kept tokenised, least recently used dropped first
TEXT_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids")  # what the processor derives from the prompt
PAD_VALUES = {"attention_mask": 0, "mm_token_type_ids": 0}  # input_ids pad with the tokenizer's pad id


def resolve_dtype(name: str, device: str | torch.device) -> torch.dtype:
    """``auto`` means bfloat16 where it is fast (CUDA) and float32 elsewhere."""
    if name == "auto":
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"backbone_dtype={name!r} is not a torch dtype: use auto, float32, bfloat16 or float16.")
    return dtype


def _is_hub_id(name_or_path: str) -> bool:
    parts = name_or_path.split("/")
    return len(parts) == 2 and all(parts) and not name_or_path.startswith((".", "~"))


def check_reachable(name_or_path: str, flag: str = "--policy.vlm_model_name", what: str = "Backbone") -> None:
    """A model that is neither a local directory nor a Hub id the Hub (or its cache, offline) can give: say so now,
    instead of transformers' ``OSError`` about a repository it cannot reach."""
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    if Path(name_or_path).expanduser().exists() or (_is_hub_id(name_or_path) and not offline):
        return
    if _is_hub_id(name_or_path) and try_to_load_from_cache(name_or_path, "config.json") is not None:
        return  # offline, from the cache
    raise FileNotFoundError(
        f"{what} {name_or_path!r} does not exist locally"
        + (" and the Hub is offline (HF_HUB_OFFLINE=1), with no copy in its cache" if offline else "")
        + f". Fix: pass {flag}=<a local checkpoint directory or a Hub id> (download it first with `hf download "
        "<id> --local-dir DIR` where the Hub is reachable); for a tiny offline backbone run `roboalign "
        "make-tiny-backbone OUT_DIR --arch qwen2_5_vl`."
    )


def load_vlm(name_or_path: str, dtype: torch.dtype) -> tuple[nn.Module, object]:
    """Load model and processor by hub id or path, with errors that say how to fix them."""
    path = Path(name_or_path).expanduser()
    check_reachable(name_or_path)
    source = str(path) if path.exists() else name_or_path
    try:
        model = AutoModelForImageTextToText.from_pretrained(source, dtype=dtype)
        processor = AutoProcessor.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise OSError(
            f"Could not load the backbone {source!r} as an image-text-to-text model ({error}). Fix: point "
            "--policy.vlm_model_name at a complete transformers checkpoint (config.json, weights, tokenizer, "
            "processor), e.g. Qwen/Qwen2.5-VL-7B-Instruct or the output of `roboalign align grpo`."
        ) from error
    return model, processor


def _language_model(vlm: nn.Module) -> nn.Module:
    for name in ("language_model", "text_model"):
        if hasattr(vlm, name):
            return getattr(vlm, name)
    raise TypeError(f"Cannot find the language model inside {type(vlm).__name__}.")


class VLMBackbone(nn.Module):
    """Encodes (camera images, instruction) into features of one LLM layer plus their padding mask."""

    def __init__(
        self,
        name_or_path: str,
        layer: int,
        dtype: torch.dtype,
        image_resolution: tuple[int, int],
        prompt_template: str,
    ):
        super().__init__()
        model, self.processor = load_vlm(name_or_path, dtype)
        self.vlm = model.model  # without the LM head: the VLA never predicts text
        language_model = _language_model(self.vlm)
        num_layers = len(language_model.layers)
        if layer > num_layers:
            raise ValueError(
                f"vlm_layer={layer} but {name_or_path!r} has only {num_layers} language layers: "
                f"set --policy.vlm_layer to at most {num_layers}."
            )
        language_model.layers = language_model.layers[:layer]
        self.hidden_size = model.config.get_text_config().hidden_size
        self.image_token_id = model.config.image_token_id
        self.image_resolution = tuple(image_resolution)
        self.prompt_template = prompt_template
        self.dtype = dtype
        self._token_cache: OrderedDict[tuple, dict[str, Tensor]] = OrderedDict()

    def build_prompts(self, tasks: list[str], num_images: int) -> list[str]:
        """One chat-formatted user turn per sample: every camera image, then the instruction."""
        prompts = []
        for task in tasks:
            content = [{"type": "image"}] * num_images
            content.append({"type": "text", "text": self.prompt_template.format(task=task.strip(), state="")})
            messages = [{"role": "user", "content": content}]
            prompts.append(self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
        return prompts

    def prepare(self, images: list[Tensor], tasks: list[str]) -> dict[str, Tensor]:
        """Model inputs for (B, 3, H, W) float images in [0, 1], one per camera, kept on their device.

        The images are resized and patchified where they are (the fast image processor takes a
        ``device``), not copied to the CPU; each instruction's prompt is tokenised once (it only
        changes between episodes) and its token ids reused for every chunk, whatever it is batched with.
        """
        device = images[0].device
        # Bicubic with antialiasing, as alignment's PIL resize (align/data.py), so the pixels match alignment's.
        resized = [
            F.interpolate(img.float(), size=self.image_resolution, mode="bicubic", antialias=True).clamp(0, 1)
            for img in images
        ]
        per_sample = [[camera[i] for camera in resized] for i in range(len(tasks))]
        shapes = tuple(tuple(camera.shape[1:]) for camera in resized)  # they fix the image token count
        text = self.pad([self.prompt_tokens(task, shapes) for task in tasks])
        pixels = self.processor.image_processor(images=per_sample, return_tensors="pt", device=device, do_rescale=False)
        inputs = {k: v.to(device) for k, v in {**text, **pixels}.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        return inputs

    def prompt_tokens(self, task: str, shapes: tuple[tuple[int, ...], ...]) -> dict[str, Tensor]:
        """One prompt's token ids for images of ``shapes``, from the LRU cache or tokenised (with blank images)."""
        key = (task, shapes)
        if key in self._token_cache:
            self._token_cache.move_to_end(key)
            return self._token_cache[key]
        blanks = [torch.zeros(shape) for shape in shapes]
        inputs = self.processor(
            text=self.build_prompts([task], len(shapes)), images=[blanks], return_tensors="pt", do_rescale=False
        )
        tokens = {k: v[0] for k, v in inputs.items() if k in TEXT_KEYS}
        self._token_cache[key] = tokens
        if len(self._token_cache) > TOKEN_CACHE_SIZE:
            self._token_cache.popitem(last=False)
        return tokens

    def pad(self, prompts: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Stack prompts as the processor pads a batch: on the tokenizer's side, with its pad id and mask 0."""
        length = max(len(p["input_ids"]) for p in prompts)
        left = self.processor.tokenizer.padding_side == "left"
        values = {**PAD_VALUES, "input_ids": self.processor.tokenizer.pad_token_id}
        return {
            key: torch.stack([
                F.pad(p[key], (length - len(p[key]), 0) if left else (0, length - len(p[key])), value=values[key])
                for p in prompts
            ])
            for key in prompts[0]
        }

    def image_token_count(self, num_cameras: int) -> int:
        """Image tokens per sample: fixed by the camera count and the resolution (one tokenisation of blanks)."""
        blank = [torch.zeros(3, *self.image_resolution)] * num_cameras
        inputs = self.processor(
            text=self.build_prompts(["-"], num_cameras), images=[blank], return_tensors="pt", do_rescale=False
        )
        return int((inputs["input_ids"] == self.image_token_id).sum())

    def encode(self, inputs: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Hidden states of the cut layer, their padding mask and which of them are image tokens."""
        hidden = self.vlm(**inputs, use_cache=False).last_hidden_state
        return hidden, inputs["attention_mask"].bool(), inputs["input_ids"] == self.image_token_id

    def forward(self, images: list[Tensor], tasks: list[str]) -> tuple[Tensor, Tensor, Tensor]:
        """images: one (B, 3, H, W) float tensor in [0, 1] per camera. Returns features, mask, image-token mask."""
        return self.encode(self.prepare(images, tasks))
