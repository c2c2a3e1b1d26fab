"""Every command's sections keep that command's defaults whatever flags are given.

draccus rebuilds a nested section from its class's defaults as soon as one of its fields is on the command line,
not from the parent's ``default_factory``: GRPO's lr 1e-6 became SFT's 2e-5 on any ``--training.*`` flag. Each
command is found through the ``roboalign`` entry point, and each field of each section is given alone.
"""

import dataclasses
import importlib
import inspect
import re
import shlex
from pathlib import Path

import draccus
import pytest

from lerobot_roboalign.cli import COMMANDS

REPO = Path(__file__).resolve().parents[2]


def command_configs() -> dict[str, type]:
    """Each sub-command's draccus config class, read from its module's ``draccus.parse(config_class=...)``."""
    configs = {}
    for words, (module_name, _) in COMMANDS.items():
        module = importlib.import_module(module_name)
        entry = getattr(module, "main_" + words[-1].replace("-", "_"), None) or module.main
        found = re.search(r"config_class=(\w+)", inspect.getsource(entry))
        if found:
            configs[" ".join(words)] = getattr(module, found.group(1))
    return configs


CONFIGS = command_configs()


def other_value(value):
    """A different value of the same simple type (None where there is none: the default is given again)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value + 0.5
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return [*value, "x"]
    return None


def encoded(value) -> str:
    if isinstance(value, list):
        return "[" + ",".join(map(str, value)) + "]"
    return str(value).lower() if isinstance(value, bool) else str(value)


def single_flags() -> list[tuple[str, str, str]]:
    """(command, section, field) for every field of type bool/int/float/str/Path/list of every section."""
    cases = []
    for command, config in CONFIGS.items():
        default = draccus.parse(config_class=config, args=[])
        for section in dataclasses.fields(default):
            value = getattr(default, section.name)
            if not dataclasses.is_dataclass(value):
                continue
            for leaf in dataclasses.fields(value):
                if isinstance(getattr(value, leaf.name), (bool, int, float, str, Path, list)):
                    cases.append((command, section.name, leaf.name))
    return cases


def test_the_commands_with_sections_are_all_covered():
    sectioned = {c for c, s, _ in single_flags()}
    assert {"align sft", "align grpo", "align reason", "align generate", "tokenizer fit", "tokenizer report"} <= sectioned


@pytest.mark.parametrize(("command", "section", "name"), single_flags(), ids=lambda x: x)
def test_one_flag_changes_one_field_and_keeps_the_commands_defaults(command, section, name):
    config = CONFIGS[command]
    default = draccus.parse(config_class=config, args=[])
    value = getattr(getattr(default, section), name)
    new = other_value(value)
    try:
        parsed = draccus.parse(config_class=config, args=[f"--{section}.{name}={encoded(value if new is None else new)}"])
    except Exception:  # a changed value a section's own check refuses: give its default instead
        new = None
        parsed = draccus.parse(config_class=config, args=[f"--{section}.{name}={encoded(value)}"])
    expected = dataclasses.replace(default, **{section: dataclasses.replace(getattr(default, section),
                                                                             **{name: value if new is None else new})})
    assert parsed == expected


def grpo_commands() -> list[str]:
    """The `align grpo` commands printed in the README, the docs, the examples and grpo.py's docstring."""
    from lerobot_roboalign.align import grpo

    texts = [p.read_text() for p in (REPO / "README.md", *REPO.glob("docs/*.md"), *REPO.glob("examples/*/README.md"))]
    texts.append(grpo.__doc__)
    commands = []
    for text in texts:
        for command in re.sub(r"\\\n\s*", " ", text).splitlines():
            if " align grpo " in f" {command.strip()} ":
                commands.append(command.strip().strip("`"))
    return commands


@pytest.mark.parametrize("command", grpo_commands())
def test_printed_grpo_commands_keep_the_grpo_recipe(command, monkeypatch):
    from lerobot_roboalign.align.grpo import AlignGRPOConfig

    monkeypatch.chdir(REPO)  # --config_path=examples/paper/... is relative to the repository
    argv = [arg for arg in shlex.split(command.split("#")[0]) if arg != "..."]  # "..." elides the data flags
    cfg = draccus.parse(config_class=AlignGRPOConfig, args=argv[argv.index("grpo") + 1:])
    assert (cfg.training.learning_rate, cfg.training.lr_scheduler_type, cfg.training.warmup_ratio) == (1e-6, "constant", 0.0)
    assert not cfg.model.freeze_vision
    batch = cfg.training.per_device_train_batch_size
    assert batch in (5, 10)  # the default, or examples/paper/align_grpo.json's
    assert (cfg.grpo.generation_batch_size or batch) % cfg.grpo.num_generations == 0
