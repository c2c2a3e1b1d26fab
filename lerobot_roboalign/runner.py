"""Run LeRobot's own console commands (lerobot-train, lerobot-eval, ...) as subprocesses.

The demo and the end-to-end tests drive the exact commands a user types, so they share
this one launcher: it forces offline mode, echoes the output line by line when asked (long stages show progress), and on failure
raises with the command line and the tail of its output instead of a bare exit code.
"""

import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

# The smallest head that still learns the synthetic and simulated tasks in a few hundred steps. Image size and prompt
# are not set: they come from the backbone's alignment record (alignment_format.py), as for a user's backbone.
TINY_VLM_LAYER = 2  # of the tiny backbone's 4: the middle layer, as the paper's head reads a 7B's middle layer
TINY_POLICY_ARGS = (
    f"--policy.vlm_layer={TINY_VLM_LAYER}",
    "--policy.head_hidden_size=64",
    "--policy.head_num_layers=2",
    "--policy.head_num_heads=4",
    "--policy.device=cpu",
    "--policy.push_to_hub=false",
)


class LeRobotCommandError(RuntimeError):
    """A LeRobot command exited non-zero; the message carries its command line and output tail."""


def lerobot_command(name: str) -> str:
    """Path of a console script installed next to the running interpreter."""
    candidate = Path(sys.executable).with_name(name)
    return str(candidate) if candidate.exists() else name


def run_lerobot(
    name: str, args: list[str], cwd: Path | None = None, timeout: float | None = None, stream: bool = False,
    label: str | None = None,
) -> str:
    """Run ``name args...`` offline; return its combined output or raise LeRobotCommandError.

    With ``stream`` every output line is also echoed to the console as it comes (progress of
    long stages), prefixed with ``label`` (default: the command) so parallel stages stay readable,
    while the whole output is still kept for the log file and the error tail.
    """
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [lerobot_command(name), *args]
    if stream:
        returncode, output = _run_streamed(command, cwd, env, timeout, label or name)
    else:
        result = subprocess.run(
            command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
        returncode, output = result.returncode, result.stdout + result.stderr
    if returncode != 0:
        tail = "\n".join(output.splitlines()[-40:])
        raise LeRobotCommandError(f"{' '.join(command)} exited with {returncode}:\n{tail}")
    return output


PROGRESS_BAR = re.compile(r"\d+%\|")  # a tqdm refresh: tqdm's carriage returns arrive as one line per update
PROGRESS_EVERY_S = 2.0


def _run_streamed(
    command: list[str], cwd: Path | None, env: dict, timeout: float | None, label: str
) -> tuple[int, str]:
    """Tee the merged stdout/stderr of ``command`` to our stdout, line by line.

    Progress-bar refreshes are echoed at most every ``PROGRESS_EVERY_S`` seconds (two stages stream at once in
    the demo); every other line is echoed, and the returned output keeps every line.
    """
    lines: list[str] = []
    last_bar = -math.inf
    with subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if PROGRESS_BAR.search(line):
                if time.monotonic() - last_bar < PROGRESS_EVERY_S:
                    continue
                last_bar = time.monotonic()
            sys.stdout.write(f"  [{label}] {line}")
            sys.stdout.flush()
        returncode = process.wait(timeout=timeout)
    return returncode, "".join(lines)


def train_args(
    dataset_root: Path,
    repo_id: str,
    backbone: Path | str,
    output_dir: Path,
    steps: int,
    batch_size: int = 4,
    seed: int = 0,
    extra: tuple[str, ...] = (),
    save_freq: int | None = None,
) -> list[str]:
    """lerobot-train arguments for a small roboalign run on a local dataset (``extra`` appended)."""
    return [
        f"--dataset.repo_id={repo_id}",
        f"--dataset.root={dataset_root}",
        "--policy.type=roboalign",
        f"--policy.vlm_model_name={backbone}",
        *TINY_POLICY_ARGS,
        f"--steps={steps}",
        f"--batch_size={batch_size}",
        f"--save_freq={save_freq or steps}",
        f"--log_freq={max(1, steps // 10)}",
        "--num_workers=0",
        f"--output_dir={output_dir}",
        "--wandb.enable=false",
        f"--seed={seed}",
        *extra,
    ]
