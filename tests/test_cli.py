"""`roboalign` as people probe it: help for the whole tool and for a command group, clear unknown-command errors."""

import subprocess
import sys

import pytest


def roboalign(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lerobot_roboalign.cli", *args], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize("flag", ["--help", "-h", "help"])
def test_group_help_lists_its_commands_and_exits_zero(flag):
    result = roboalign("tokenizer", flag)
    assert result.returncode == 0, result.stderr
    assert "usage: roboalign tokenizer <command>" in result.stdout
    assert "tokenizer fit" in result.stdout and "tokenizer report" in result.stdout
    assert "align sft" not in result.stdout  # only the group's commands
    assert "unknown" not in result.stdout + result.stderr


def test_top_level_help_lists_every_group():
    result = roboalign("--help")
    assert result.returncode == 0
    for command in ("tokenizer fit", "align sft", "align push", "calvin eval", "demo"):
        assert command in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["tokenizer"], "roboalign: 'tokenizer' needs a command"),
        (["tokenizer", "fitt"], "roboalign: unknown tokenizer command 'fitt'"),
        (["bogus"], "roboalign: unknown command 'bogus'"),
        (["bogus", "--help"], "roboalign: unknown command 'bogus'"),
    ],
)
def test_unknown_or_incomplete_commands_exit_non_zero_with_a_clear_message(args, message):
    result = roboalign(*args)
    assert result.returncode != 0
    first_line = result.stderr.splitlines()[0]
    assert first_line == message
    assert "commands:" in result.stderr  # followed by what exists
