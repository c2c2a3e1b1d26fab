"""`roboalign --help` and every sub-command's help: fast (nothing heavy is imported before the usage prints) and
named in the usage line. The commands come from cli.COMMANDS, so a new one is covered when it is registered."""

import json
import subprocess
import sys
import time

import pytest

from lerobot_roboalign.cli import COMMANDS

# Generous bound for a loaded 2-core CI machine; on an idle one these take well under 2 s.
HELP_SECONDS = 10.0
# What made `roboalign align sft --help` take 7 s: none of these may load before a command's usage prints.
HEAVY_PACKAGES = ("torch", "transformers", "datasets", "trl", "lerobot", "mujoco")
# Runs every command's --help in one process and reports, per command, the heavy packages its help imported.
PROBE = """
import contextlib, io, json, sys
from lerobot_roboalign.cli import COMMANDS, main

def heavy():
    return {name.split(".")[0] for name in sys.modules} & set(json.loads(sys.argv[1]))

found = {}
for words in COMMANDS:
    before = heavy()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        main([*words, "--help"])
    found[" ".join(words)] = sorted(heavy() - before)
print(json.dumps(found))
"""


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


def test_no_sub_command_help_imports_torch_transformers_datasets_trl_lerobot_or_mujoco():
    run = subprocess.run([sys.executable, "-c", PROBE, json.dumps(HEAVY_PACKAGES)],
                         capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    found = json.loads(run.stdout.splitlines()[-1])
    assert set(found) == {" ".join(words) for words in COMMANDS}
    heavy = {command: packages for command, packages in found.items() if packages}
    assert not heavy, (
        f"--help imports {heavy} (a package is named at the first command that imported it): keep the module a "
        "command maps to (cli.COMMANDS) import-light, its config in a stdlib-only module (e.g. align/config.py) and "
        "the heavy imports inside the functions that run the command."
    )


@pytest.mark.parametrize("words", list(COMMANDS), ids=" ".join)
def test_sub_command_help_is_fast_and_names_the_sub_command(words):
    run, seconds = _help(*words)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.startswith(f"usage: roboalign {' '.join(words)} [-h]"), run.stdout[:200]
    assert seconds < HELP_SECONDS, f"roboalign {' '.join(words)} --help took {seconds:.1f} s"
