"""`roboalign` as people probe it: help for the whole tool and for a command group, clear unknown-command errors."""

import os
import subprocess
import sys

import pytest

from lerobot_roboalign.cli import main


def test_group_help_exits_zero_and_unknown_command_exits_non_zero_as_processes():
    def run(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "lerobot_roboalign.cli", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)

    help_run = run("tokenizer", "--help")
    assert help_run.returncode == 0 and "tokenizer fit" in help_run.stdout and not help_run.stderr.strip()
    unknown = run("tokenizer", "fitt")
    assert unknown.returncode == 1
    assert unknown.stderr.splitlines()[0] == "roboalign: unknown tokenizer command 'fitt'"


@pytest.mark.parametrize("flag", ["--help", "-h", "help"])
def test_group_help_lists_only_its_commands(flag, capsys):
    main(["tokenizer", flag])
    out = capsys.readouterr().out
    assert "usage: roboalign tokenizer <command>" in out
    assert "tokenizer fit" in out and "tokenizer report" in out
    assert "align sft" not in out and "unknown" not in out


def test_top_level_help_lists_every_group(capsys):
    main(["--help"])
    out = capsys.readouterr().out
    for command in ("tokenizer fit", "align sft", "align push", "calvin eval", "demo"):
        assert command in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["tokenizer"], "roboalign: 'tokenizer' needs a command"),
        (["tokenizer", "fitt"], "roboalign: unknown tokenizer command 'fitt'"),
        (["bogus"], "roboalign: unknown command 'bogus'"),
        (["bogus", "--help"], "roboalign: unknown command 'bogus'"),
    ],
)
def test_unknown_or_incomplete_commands_stop_with_a_clear_message(args, message):
    with pytest.raises(SystemExit) as stop:
        main(args)
    text = str(stop.value.code)  # a string code: Python prints it to stderr and exits with 1
    assert text.splitlines()[0] == message
    assert "commands:" in text  # followed by what exists


def test_streamed_command_echoes_progress_bars_sparsely_but_keeps_every_line(capsys):
    from lerobot_roboalign.runner import _run_streamed

    script = "import sys\nfor i in range(200): print(f'Training: {i // 2}%|#| {i}/200')\nprint('loss: 0.5')"
    code, output = _run_streamed([sys.executable, "-c", script], None, dict(os.environ), 60, "train base")
    echoed = capsys.readouterr().out.splitlines()
    assert code == 0 and len(output.splitlines()) == 201  # everything kept for the log and the loss parser
    assert echoed[0] == "  [train base] Training: 0%|#| 0/200" and echoed[-1] == "  [train base] loss: 0.5"
    assert len(echoed) < 10  # 200 refreshes in well under 2 s: the first one and the final line
