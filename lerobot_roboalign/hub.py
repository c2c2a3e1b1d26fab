"""Sharing on the Hugging Face Hub: an aligned MLLM as its own repository, and policies that name it.

A RoboAlign policy checkpoint holds the action head; its backbone is named by ``vlm_model_name``, which
after alignment is usually a local directory (``out/grpo/model``). Pushed as it is, others would get a head
whose backbone they cannot load. So the aligned MLLM is pushed first (``roboalign align push``, or
``roboalign align sft|grpo --push_to_hub=...``), which records its repository in the local directory
(``hub.json``); a policy pushed later names the backbone by that repository, and a policy whose backbone
was never pushed is refused before training starts, with the command that pushes it.

    roboalign align push --model_dir=out/grpo/model --repo_id=me/so101-aligned
"""

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import draccus

logger = logging.getLogger(__name__)

HUB_RECORD_FILE = "hub.json"
# What a directory needs so that AutoModelForImageTextToText + AutoProcessor load it: (what, any of these files).
REQUIRED_FILES = (
    ("the model config", ("config.json",)),
    ("the weights", ("model.safetensors", "model.safetensors.index.json")),
    ("the tokenizer", ("tokenizer.json", "tokenizer_config.json")),
    ("the processor config", ("processor_config.json", "preprocessor_config.json")),
)


@dataclass(frozen=True)
class BackbonePush:
    """What ``push_backbone`` uploads: these files of ``model_dir`` (relative paths) to ``repo_id``."""

    model_dir: Path
    repo_id: str
    files: tuple[str, ...]


def check_repo_id(repo_id: str) -> None:
    from .backbone import _is_hub_id  # torch and transformers: not needed for `roboalign align push --help`

    if not _is_hub_id(repo_id):
        raise ValueError(
            f"{repo_id!r} is not a Hub repository id. Fix: pass <user or org>/<name>, e.g. me/so101-aligned."
        )


def _shared_files(model_dir: Path) -> dict[str, int]:
    """Relative path -> size of every file to share: no hidden staging leftovers, not the local push record."""
    files = {}
    for path in sorted(model_dir.rglob("*")):
        relative = path.relative_to(model_dir)
        if path.is_file() and relative.name != HUB_RECORD_FILE and not any(p.startswith(".") for p in relative.parts):
            files[relative.as_posix()] = path.stat().st_size
    return files


def plan_backbone_push(model_dir: str | Path, repo_id: str) -> BackbonePush:
    """Check that ``model_dir`` is a complete, loadable MLLM and list what would be uploaded."""
    check_repo_id(repo_id)
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"{model_dir} is not a directory. Fix: pass the aligned model, e.g. out/grpo/model.")
    files = _shared_files(model_dir)
    for what, names in REQUIRED_FILES:
        if not any(name in files for name in names):
            raise ValueError(
                f"{model_dir} has no {what} ({' or '.join(names)}), so others could not load it. Fix: push the "
                "final model of `roboalign align sft|grpo` (<output_dir>/model), not a partial directory."
            )
    return BackbonePush(model_dir, repo_id, tuple(files))


def record_backbone_push(model_dir: Path, repo_id: str, revision: str | None) -> None:
    """Remember in ``model_dir`` which repository (and commit) now holds exactly these files."""
    record = {"repo_id": repo_id, "revision": revision, "files": _shared_files(model_dir)}
    (Path(model_dir) / HUB_RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")


def push_backbone(model_dir: str | Path, repo_id: str, private: bool = False) -> str:
    """Upload an aligned MLLM to its own Hub repository and record it; returns the repository id."""
    from huggingface_hub import HfApi

    plan = plan_backbone_push(model_dir, repo_id)
    api = HfApi()
    repo = api.create_repo(repo_id=plan.repo_id, private=private, exist_ok=True).repo_id
    logger.info("Uploading %d files of %s to %s", len(plan.files), plan.model_dir, repo)
    commit = api.upload_folder(
        repo_id=repo,
        folder_path=plan.model_dir,
        allow_patterns=list(plan.files),
        commit_message="Upload RoboAlign-aligned MLLM (model, processor, action vocabulary, FAST tokenizer)",
    )
    record_backbone_push(plan.model_dir, repo, commit.oid)
    return repo


def backbone_reference(vlm_model_name: str) -> str:
    """The name others load this backbone by: a Hub id as is, a pushed local directory by its repository.

    Raises ``ValueError`` saying what to push first when the backbone exists only on this machine.
    """
    path = Path(vlm_model_name).expanduser()
    if not path.exists():
        return vlm_model_name
    push_command = (
        f"`roboalign align push --model_dir={path} --repo_id=<user>/<name>` (or align it with "
        "`roboalign align grpo ... --push_to_hub=<user>/<name>`)"
    )
    record_file = path / HUB_RECORD_FILE
    if not record_file.is_file():
        raise ValueError(
            f"--policy.push_to_hub=true would share a policy whose backbone {vlm_model_name!r} is a local directory "
            f"that others cannot load. Fix: push the backbone first with {push_command}, then run this again; "
            "or pass --policy.push_to_hub=false."
        )
    record = json.loads(record_file.read_text())
    if record.get("files") != _shared_files(path):
        raise ValueError(
            f"The backbone {vlm_model_name!r} changed after it was pushed to {record.get('repo_id')!r}, so that "
            f"repository no longer holds this backbone. Fix: push it again with {push_command}."
        )
    return record["repo_id"]


def peft_base_reference(pretrained_path: str | Path | None) -> None:
    """``--peft`` shares only adapters: refuse a base policy that exists only on this machine."""
    if pretrained_path is not None and Path(pretrained_path).expanduser().exists():
        raise ValueError(
            f"With --peft, --policy.push_to_hub=true uploads only adapters on top of the base policy "
            f"{str(pretrained_path)!r}, a local directory others cannot load. Fix: push the base policy first "
            f"(`hf upload <user>/<policy> {pretrained_path}`), then fine-tune from --policy.path=<user>/<policy>; "
            "or fine-tune without --peft; or pass --policy.push_to_hub=false."
        )


@contextmanager
def shared_backbone_name(config) -> Iterator[None]:
    """While pushing, name the backbone as others can load it (``config.json`` and ``backbone.json``)."""
    local = config.vlm_model_name
    config.vlm_model_name = backbone_reference(local)
    try:
        yield
    finally:
        config.vlm_model_name = local


@dataclass
class PushConfig:
    model_dir: Path = Path("outputs/align_grpo/model")  # the final model of `roboalign align sft|grpo`
    repo_id: str = ""  # <user or org>/<name>
    private: bool = False


def main(argv: list[str] | None = None) -> str:
    cfg = draccus.parse(config_class=PushConfig, args=argv or [])
    repo = push_backbone(cfg.model_dir, cfg.repo_id, cfg.private)
    print(f"Pushed {cfg.model_dir} to https://huggingface.co/{repo}; policies trained on it now name it {repo!r}.")
    return repo
