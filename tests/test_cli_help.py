"""`roboalign --help` and sub-command help: fast (the package imports nothing heavy) and named in the usage line."""

import subprocess
import sys
import time

import pytest

# Generous bound for a loaded 2-core CI machine; on an idle one these take well under 2 s.
HELP_SECONDS = 10.0
# Sub-commands whose modules keep their heavy imports (torch, transformers, LeRobot) inside functions.
LIGHT_COMMANDS = (
    ("calibration", "check"),
    ("rollout", "check"),
    ("files", "export"),
    ("calvin", "eval"),
    ("demo",),
    ("make-tiny-backbone",),
    ("align", "push"),
    ("tokenizer", "fit"),
    ("tokenizer", "report"),
)


def _help(*words: str) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "lerobot_roboalign.cli", *words, "--help"],
                         capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    return run, time.perf_counter() - start


def test_top_level_help_is_fast_and_imports_no_heavy_package():
    probe = "import sys; from lerobot_roboalign.cli import main; main(['--help']); print(sorted({'torch', 'lerobot', 'transformers'} & set(sys.modules)))"
    run = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.splitlines()[-1] == "[]"
    _, seconds = _help()
    assert seconds < HELP_SECONDS


@pytest.mark.parametrize("words", LIGHT_COMMANDS, ids=" ".join)
def test_sub_command_help_is_fast_and_names_the_sub_command(words):
    run, seconds = _help(*words)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.startswith(f"usage: roboalign {' '.join(words)} [-h]")
    assert seconds < HELP_SECONDS, f"roboalign {' '.join(words)} --help took {seconds:.1f} s"


@pytest.mark.slow  # the other commands import torch, transformers or LeRobot before they can print their help
def test_every_sub_command_help_names_the_sub_command_in_its_usage_line():
    from lerobot_roboalign.cli import COMMANDS

    for words in COMMANDS:
        if words in LIGHT_COMMANDS:
            continue
        run, _ = _help(*words)
        assert run.returncode == 0, (words, run.stderr[-2000:])
        assert run.stdout.startswith(f"usage: roboalign {' '.join(words)} [-h]"), (words, run.stdout[:200])
