"""Every command in a ``bash`` block of README.md and examples/*/README.md works as written.

Each command line (continuations joined, comments dropped) must be matched by exactly one rule of ``RULES``:

- ``run``: run by ``test_readme_journeys_run_at_tiny_size`` (slow) as printed, in a workspace where the README's
  names exist (synthetic LeRobotDatasets of each journey's own shapes under the names and roots the commands use:
  ``me/so101`` in ``data/so101``, LIBERO's two 256x256 cameras, 8-D state and 7-D action as
  ``HuggingFaceVLA/libero``, CALVIN's 200x200 and 84x84 cameras, 15-D state and 7-D action in ``data/calvin_abc``;
  ``HOME`` is the workspace). The text of a command changes only as ``SUBSTITUTIONS`` lists (the one table of
  them), and ``Rule.tiny`` arguments / ``Rule.env`` variables only shrink sizes: ``test_tiny_sizes_only_shrink``
  checks each against the value the README prints (on the line or in its ``--config_path`` file) and the
  allow-lists ``SIZE_FIELDS`` / ``WHERE_IT_RUNS``. ``lerobot-record`` and ``lerobot-rollout`` of the real-arm
  journey run as typed on virtual SO-101 arms (tests/robots/: LeRobot's robot, motor bus and SDK, only the serial
  ports and cameras virtual), with the calibration files the README's install commands put in ``~/.cache``.
- ``parse``: the command needs hardware, a GPU, the Hub, a simulator run of hours or is the fresh-machine set-up;
  ``Rule.check`` parses its arguments with the command's own parser (LeRobot's ``parser.wrap`` or the config class
  of a ``roboalign`` command) or checks what can be checked offline (a Makefile target, a pip extra, a script's
  syntax), and ``Rule.reason`` says why it is not run.

A new command without a rule, or one matched by two rules, fails ``test_every_readme_command_has_exactly_one_rule``.
``make demo`` and ``make test`` are not run here: the demo is ``tests/demo/test_demo.py`` (``--quick``) and the tests
are this suite.
"""

import importlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import draccus
import pytest
import yaml

from lerobot_roboalign.runner import TINY_POLICY_ARGS

REPO = Path(__file__).resolve().parents[1]
DOCS = ("README.md", *sorted(str(p.relative_to(REPO)) for p in REPO.glob("examples/*/README.md")))
BASH_BLOCK = re.compile(r"^```bash\n(.*?)^```", re.M | re.S)
BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Command:
    doc: str
    line: str

    def argv(self) -> list[str]:
        return shlex.split(self.line)


def strip_comment(line: str) -> str:
    """The line without a shell comment (a ``#`` outside quotes, at the start of a word)."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def readme_commands(doc: str) -> list[Command]:
    commands = []
    for block in BASH_BLOCK.findall((REPO / doc).read_text()):
        pending = ""
        for raw in block.splitlines():
            if raw.rstrip().endswith("\\"):
                pending += raw.rstrip()[:-1]
                continue
            line = " ".join(strip_comment(pending + raw).split())
            pending = ""
            if line:
                commands.append(Command(doc, line))
    return commands


ALL_COMMANDS = [command for doc in DOCS for command in readme_commands(doc)]


# ---- parse-only checks ---------------------------------------------------------------------------------------
def parse_with_lerobot(config_class, argv: list[str]):
    """Parse argv exactly as a LeRobot console script (``parser.wrap``) does; return the config."""
    from lerobot.configs import parser

    parsed = {}

    @parser.wrap()
    def command(cfg: config_class):  # noqa: ANN001
        parsed["cfg"] = cfg

    saved = sys.argv
    sys.argv = ["lerobot", *argv]
    try:
        command()
    finally:
        sys.argv = saved
    return parsed["cfg"]


LEROBOT_CONFIGS = {
    "lerobot-setup-motors": "lerobot.scripts.lerobot_setup_motors:SetupConfig",
    "lerobot-calibrate": "lerobot.scripts.lerobot_calibrate:CalibrateConfig",
    "lerobot-teleoperate": "lerobot.scripts.lerobot_teleoperate:TeleoperateConfig",
    "lerobot-record": "lerobot.scripts.lerobot_record:RecordConfig",
    "lerobot-rollout": "lerobot.rollout:RolloutConfig",
    "lerobot-train": "lerobot.configs.train:TrainPipelineConfig",
    "lerobot-edit-dataset": "lerobot.scripts.lerobot_edit_dataset:EditDatasetConfig",
}


def load(name: str):
    module, attribute = name.split(":")
    return getattr(importlib.import_module(module), attribute)


def with_checkpoint(argv: list[str], checkpoint: Path) -> list[str]:
    """``--policy.path=...`` of a checkpoint the README trains earlier: a saved roboalign config stands for it."""
    return [f"--policy.path={checkpoint}" if arg.startswith("--policy.path=") else arg for arg in argv]


def check_lerobot(argv: list[str], checkpoint: Path):
    cfg = parse_with_lerobot(load(LEROBOT_CONFIGS[argv[0]]), with_checkpoint(argv[1:], checkpoint))
    if argv[0] == "lerobot-train":
        cfg.validate()  # what lerobot-train checks before it starts (repo_id for a push, presets, ...)
    return cfg


def check_roboalign(argv: list[str], checkpoint: Path):
    words = tuple(argv[1:3])
    if words[0] == "demo":
        from lerobot_roboalign.demo import parse_config

        return parse_config(argv[2:])
    config = {
        ("calvin", "eval"): "lerobot_roboalign.calvin.evaluate:CalvinEvalConfig",
        ("align", "push"): "lerobot_roboalign.hub:PushConfig",
        ("align", "sft"): "lerobot_roboalign.align.sft:AlignSFTConfig",
        ("align", "grpo"): "lerobot_roboalign.align.grpo:AlignGRPOConfig",
    }[words]
    return draccus.parse(config_class=load(config), args=argv[3:])


def check_accelerated_align(argv: list[str], checkpoint: Path):
    """``accelerate launch --config_file F -m lerobot_roboalign.cli align sft|grpo ...``: F exists, the stage parses."""
    assert (REPO / argv[argv.index("--config_file") + 1]).is_file()
    start = argv.index("lerobot_roboalign.cli") + 1
    stage = {"sft": "lerobot_roboalign.align.sft:AlignSFTConfig", "grpo": "lerobot_roboalign.align.grpo:AlignGRPOConfig"}
    return draccus.parse(config_class=load(stage[argv[start + 1]]), args=argv[start + 2 :])


def check_policy_server(argv: list[str], checkpoint: Path):
    from lerobot.async_inference.configs import PolicyServerConfig

    importlib.import_module(argv[2])
    return draccus.parse(config_class=PolicyServerConfig, args=argv[3:])


def check_robot_client(argv: list[str], checkpoint: Path):
    """RoboAlign's client (LeRobot's, guarded) parses, and sends what was recorded: record.yaml's task and cameras."""
    from lerobot.scripts.lerobot_record import RecordConfig

    from lerobot_roboalign.async_inference import RoboAlignRobotClientConfig

    assert argv[2:4] == ["lerobot_roboalign.async_inference", "client"]
    client = draccus.parse(config_class=RoboAlignRobotClientConfig, args=argv[4:])
    record = parse_with_lerobot(RecordConfig, [f"--config_path={REPO}/robots/so101/record.yaml"])
    assert client.task == record.dataset.single_task
    assert client.robot.cameras == record.robot.cameras
    return client


def check_preflight(argv: list[str], checkpoint: Path):
    """``roboalign rollout check`` takes lerobot-rollout's flags: they parse with LeRobot's RolloutConfig."""
    assert argv[1:3] == ["rollout", "check"]
    return check_lerobot(["lerobot-rollout", *argv[3:]], checkpoint)


def check_make(argv: list[str], checkpoint: Path):
    assert re.search(rf"^{argv[1]}:", (REPO / "Makefile").read_text(), re.M), f"no make target {argv[1]}"


def check_pip_extras(argv: list[str], checkpoint: Path):
    extras = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    named = {extra for arg in argv for group in re.findall(r"\[([\w,]+)\]", arg) for extra in group.split(",")}
    assert named <= extras, f"pip extras {named - extras} are not in pyproject.toml"


def check_module(argv: list[str], checkpoint: Path):
    assert importlib.util.find_spec(argv[2]) is not None, f"no module {argv[2]}"


def check_bash_script(argv: list[str], checkpoint: Path):
    subprocess.run(["bash", "-n", str(REPO / argv[1])], check=True)


def check_python_script(argv: list[str], checkpoint: Path):
    subprocess.run([sys.executable, str(REPO / argv[1]), "--help"], check=True, capture_output=True)


def check_paper_config(argv: list[str], checkpoint: Path):
    cfg = check_lerobot(argv, checkpoint)
    assert cfg.policy.vlm_model_name.endswith("/model"), "the aligned MLLM is <training.output_dir>/model"


def no_check(argv: list[str], checkpoint: Path) -> None:
    """Nothing to parse offline; the rule's reason says why."""


# ---- tiny sizes for the commands that run -------------------------------------------------------------------
TINY_VLA = (*TINY_POLICY_ARGS, "--steps=2", "--batch_size=2", "--save_freq=2", "--log_freq=1", "--num_workers=0",
            "--wandb.enable=false")  # fmt: skip
# The same 8 frames at each stage (the README runs each on every frame): SFT and GRPO need reasoning for theirs.
TINY_REASON = ("--dataset.num_samples=8", "--batch_size=4", "--max_new_tokens=8")
TINY_SFT = ("--dataset.num_samples=8", "--training.max_steps=2", "--training.per_device_train_batch_size=2",
            "--training.save_steps=2", "--training.logging_steps=1")  # fmt: skip
TINY_LORA_SFT = ("--dataset.num_samples=8", "--training.max_steps=2", "--training.save_steps=2",
                 "--training.logging_steps=1")  # the printed batch (1) kept
TINY_GRPO = ("--dataset.num_samples=8", "--training.max_steps=1", "--training.per_device_train_batch_size=2",
             "--grpo.num_generations=2", "--grpo.max_completion_length=0", "--training.save_steps=1",
             "--training.logging_steps=1")  # fmt: skip
# On virtual arms: one episode of 2 s moved by a virtual leader's "hand" (video on, as record.yaml has it), then
# rollouts of 2 s.
TINY_RECORD = ("--dataset.num_episodes=1", "--dataset.episode_time_s=2", "--dataset.reset_time_s=0")
TINY_ROLLOUT = ("--duration=2", "--device=cpu")
# One LIBERO episode of libero_spatial (its scene built once), capped at 20 steps; one CALVIN chain, 8 steps.
TINY_LIBERO_EVAL = ("SUITES=libero_spatial", "TASK_IDS=[0]", "N_EPISODES=1", "BATCH_SIZE=1", "MAX_STEPS=20")
TINY_CALVIN_EVAL = ("--num_chains=1", "--max_steps_per_subtask=8", "--device=cpu")

# Fields a tiny argument may set: sizes (at most the printed value: on the line, or in its --config_path file),
# and where it runs (only where the README prints no value for it). Anything else fails test_tiny_sizes_only_shrink.
SIZE_FIELDS = frozenset({
    "steps", "batch_size", "save_freq", "log_freq", "num_workers", "duration", "max_new_tokens", "num_chains",
    "max_steps_per_subtask", "dataset.num_samples", "dataset.num_episodes", "dataset.episode_time_s",
    "dataset.reset_time_s", "training.max_steps", "training.per_device_train_batch_size", "training.save_steps",
    "training.logging_steps", "grpo.num_generations", "grpo.max_completion_length",
    # the tiny backbone's 4 layers (the Hub-id substitution) and a head its size
    "policy.vlm_layer", "policy.head_hidden_size", "policy.head_num_layers", "policy.head_num_heads",
    # examples/libero/eval_all_suites.sh's size variables (SUITES: a subset of its suites; TASK_IDS: of their tasks)
    "N_EPISODES", "BATCH_SIZE", "MAX_STEPS", "SUITES", "TASK_IDS",
})  # fmt: skip
WHERE_IT_RUNS = frozenset({"policy.device", "device", "policy.push_to_hub", "wandb.enable", "dataset.root"})

SHIM = REPO / "tests" / "align" / "sharded_launch.py"
TWO_CPU_RANKS = "--num_processes=2 --mixed_precision=no"
# (pattern, replacement, why): the only changes made to the text of a command that runs. The virtual arm is the
# other one: lerobot-record / lerobot-rollout read a copy of their --config_path whose serial ports and cameras
# are virtual (``virtual_arm_config``: a test checks that nothing else differs).
SUBSTITUTIONS = (
    (r"Qwen/Qwen2\.5-VL-7B-Instruct", "tiny-qwen", "Hub id -> a tiny random Qwen2.5-VL (`roboalign make-tiny-backbone`)"),
    (r"Qwen/Qwen2\.5-VL-3B-Instruct", "tiny-qwen", "Hub id -> the same tiny Qwen2.5-VL (journey 6's 3B)"),
    (r"^accelerate launch --config_file (\S+) -m lerobot_roboalign\.cli ",
     rf"accelerate launch --config_file \1 {TWO_CPU_RANKS} {SHIM} ",
     "8 GPUs -> 2 CPU ranks (gloo, no bf16) through the CPU launch shim, which keeps DeepSpeed/FSDP on CPU ranks"),
    (r"^accelerate launch --config_file (\S+) (?=\$\(which lerobot-train\))",
     rf"ACCELERATE_USE_CPU=true accelerate launch --config_file \1 {TWO_CPU_RANKS} ",
     "8 GPUs -> 2 CPU ranks (gloo, no bf16): DDP needs no shim, accelerate's own CPU switch"),
)  # fmt: skip
VIRTUAL_ARM_FIELDS = {"robot.port", "teleop.port", "robot.cameras"}
VIRTUAL_CAMERAS = {"front": (64, 64), "wrist": (64, 64)}  # record.yaml's cameras, virtual and small


@dataclass(frozen=True)
class Rule:
    doc: str
    pattern: str  # re.search on the command line
    kind: str  # run | parse
    reason: str = ""  # parse: why it is not run
    check: Callable[[list[str], Path], object] | None = None  # parse: what is checked
    tiny: tuple[str, ...] = ()  # run: appended arguments (sizes)
    group: str = ""  # run: commands of a group run in order in one shell
    virtual_arm: bool = False  # run: in this process, the arms' serial ports and cameras virtual (tests/robots/)
    env: tuple[str, ...] = ()  # run: NAME=value size variables put before the command

    def matches(self, command: Command) -> bool:
        return command.doc == self.doc and re.search(self.pattern, command.line) is not None


def run(doc: str, pattern: str, group: str, tiny: tuple[str, ...] = (), virtual_arm: bool = False,
        env: tuple[str, ...] = ()) -> Rule:  # fmt: skip
    return Rule(doc, pattern, "run", tiny=tiny, group=group, virtual_arm=virtual_arm, env=env)


def parse(doc: str, pattern: str, check, reason: str) -> Rule:
    return Rule(doc, pattern, "parse", reason=reason, check=check)


README, LIBERO, CALVIN, PAPER = ("README.md", "examples/libero/README.md", "examples/calvin/README.md",
                                 "examples/paper/README.md")
HARDWARE = "needs the arm on a serial port (the virtual-bus tests in tests/robots/ drive these entry points)"
SETUP = "set-up of a fresh machine: what `make setup` does here (tests run inside its .venv)"
RULES = (
    # Top of the README and journey 1: the fresh-machine commands and the demo.
    parse(README, r"^make (demo|test|setup)$", check_make, "the fresh-machine commands; .ci/run runs make test, "
          "tests/demo/test_demo.py runs the demo (--quick)"),  # fmt: skip
    parse(README, r"^pip install -e \"\.\[feetech\]\"$", check_pip_extras, SETUP),
    parse(README, r"^pip wheel --no-deps -w dist \.$", no_check,
          "tests/test_wheel_install.py builds the wheel and installs it into a fresh venv"),
    parse(README, r"^pip install \"dist/lerobot_policy_roboalign-0\.1\.0-py3-none-any\.whl\[feetech\]\"$",
          check_pip_extras, "tests/test_wheel_install.py installs the built wheel into a fresh venv"),
    parse(README, r"^roboalign files export \.$", no_check,
          "tests/test_wheel_install.py runs it from an installed wheel (a clone has the files already)"),
    parse(README, r"^\. \.venv/bin/activate$", no_check, "shell set-up"),
    parse(README, r"^roboalign demo( |$)", check_roboalign, "tests/demo/test_demo.py runs the quick demo end to end"),
    # Journey 2: a real arm.
    parse(README, r"^lerobot-(setup-motors|calibrate|teleoperate) ", check_lerobot,
          "interactive (a person moves the arm); " + HARDWARE),
    run(README, r"^roboalign calibration check calibration/so101_(follower|leader)\.json .*--install=true", "arm"),
    run(README, r"^lerobot-record --config_path=robots/so101/record\.yaml$", "arm", TINY_RECORD, virtual_arm=True),
    run(README, r"^roboalign calibration check ~/\S+ --robot\.type=so101_follower$", "arm"),
    run(README, r"^lerobot-train --policy\.type=roboalign --dataset\.repo_id=local/so101_pick_place --policy\.vlm",
        "arm", TINY_VLA),  # fmt: skip
    run(README, r"^roboalign calibration check ~/\S+ --robot\.type=so101_follower --checkpoint=", "arm"),
    run(README, r"^lerobot-rollout --config_path=robots/so101/rollout(_rtc)?\.yaml ", "arm", TINY_ROLLOUT,
        virtual_arm=True),
    parse(README, r"^roboalign rollout check --config_path=robots/so101/rollout\.yaml ", check_preflight,
          HARDWARE + "; tests/robots/test_preflight.py runs every check on virtual SO-101 and Koch arms"),
    parse(README, r"^python -m lerobot_roboalign\.async_inference --", check_policy_server,
          "a gRPC server that waits for a robot (tests/robots/ run it with LeRobot's client on loopback)"),
    parse(README, r"^python -m lerobot_roboalign\.async_inference client ", check_robot_client, HARDWARE),
    # Journeys 3 and 4: LIBERO and CALVIN.
    run(README, r"^python -m lerobot_roboalign\.libero_setup$", "libero"),
    run(README, r"^export MUJOCO_GL=egl$", "libero"),
    run(README, r"^lerobot-train --config_path=examples/paper/libero\.json ", "libero", TINY_VLA),
    run(README, r"^bash examples/libero/eval_all_suites\.sh ", "libero", env=TINY_LIBERO_EVAL),
    parse(README, r"^git clone ", no_check, "network"),
    parse(README, r"^pip install (-e '\.\[calvin\]'|--no-deps -e calvin_env)$", check_pip_extras, SETUP),
    run(README, r"^lerobot-train --config_path=examples/paper/calvin\.json ", "calvin", TINY_VLA),
    run(README, r"^roboalign calvin eval ", "calvin", TINY_CALVIN_EVAL),
    # Journey 5: alignment, then the VLA.
    run(README, r"^roboalign tokenizer fit .*--dataset\.roots='\[data/so101\]' ", "align"),
    run(README, r"^roboalign align reason ", "align", TINY_REASON),
    run(README, r"^accelerate launch .* align sft ", "align", TINY_SFT),
    run(README, r"^accelerate launch .* align grpo ", "align", TINY_GRPO),
    run(README, r"^roboalign align generate ", "align", ("--max_new_tokens=8",)),
    run(README, r"^roboalign align plan (?!.*--method=)", "align"),
    run(README, r"^accelerate launch --config_file examples/accelerate/ddp\.yaml .*lerobot-train", "align", TINY_VLA),
    # Journey 6: one 24 GB GPU. LoRA runs at tiny size; QLoRA needs bitsandbytes.
    run(README, r"^roboalign align plan .*--method=(lora|qlora)", "lora"),
    run(README, r"^roboalign align sft (?!.*--lora\.quantize).*--lora\.enabled=true", "lora", TINY_LORA_SFT),
    run(README, r"^roboalign align grpo (?!.*--lora\.quantize).*--lora\.enabled=true", "lora", TINY_GRPO),
    run(README, r"^lerobot-train --policy\.type=roboalign --policy\.vlm_model_name=outputs/align_24gb/", "lora", TINY_VLA),
    parse(README, r"^pip install \"lerobot_policy_roboalign\[qlora\]\"$", check_pip_extras, "installs from PyPI"),
    parse(README, r"^roboalign align (sft|grpo) .*--lora\.quantize=4bit", check_roboalign,
          "a 4-bit base needs bitsandbytes (the qlora extra); tests/align/test_lora.py runs QLoRA SFT at tiny size on "
          "its CPU backend where it is installed"),
    # Reference: train and run, --peft (already tiny: run as written), the Hub, FAST tokens.
    run(README, r"^lerobot-train --policy\.type=roboalign --dataset\.repo_id=USER/DATASET ", "reference", TINY_VLA),
    run(README, r"^export HF_HUB_OFFLINE=1$", "peft"),
    run(README, r"^roboalign make-tiny-backbone outputs/tiny-qwen ", "peft"),
    run(README, r"^python -c \"from lerobot_roboalign\.synthetic import", "peft"),
    run(README, r"^TINY=", "peft"),
    run(README, r"^lerobot-train --policy\.type=roboalign --policy\.vlm_model_name=outputs/tiny-qwen \$TINY", "peft"),
    run(README, r"^lerobot-train --policy\.path=outputs/train/base/.* --peft\.method_type=LORA", "peft"),
    parse(README, r"^roboalign align push ", check_roboalign,
          "uploads to the Hub (no network here); tests/test_hub.py checks what would be uploaded"),
    parse(README, r"^lerobot-train .*--policy\.push_to_hub=true", check_lerobot,
          "uploads to the Hub; tests/test_hub.py checks the refusal of a backbone that was never pushed"),
    run(README, r"^roboalign tokenizer fit --dataset\.repo_ids='\[user/ds\]' --dataset\.roots='\[DIR\]' ", "reference"),
    run(README, r"^roboalign tokenizer report --dataset\.repo_ids='\[user/ds\]' --dataset\.roots='\[DIR\]' ",
        "reference"),
    # examples/libero: the same LIBERO run as README journey 3 (which runs), spelled out.
    parse(LIBERO, r"^pip install -e \"\.\[libero\]\"$", check_pip_extras, SETUP),
    parse(LIBERO, r"^python -m lerobot_roboalign\.libero_setup$", check_module, SETUP),
    parse(LIBERO, r"^export MUJOCO_GL=egl$", no_check, "shell set-up"),
    parse(LIBERO, r"^lerobot-train ", check_paper_config,
          "the paper's 60K-step run on the Hub's LIBERO data; README journey 3 runs the same config at tiny size"),
    parse(LIBERO, r"^bash examples/libero/eval_all_suites\.sh ", check_bash_script, "as README journey 3"),
    parse(LIBERO, r"^python examples/libero/aggregate\.py ", check_python_script,
          "needs the 4 suites' evaluations; tests/benchmarks/test_libero_aggregate.py runs it on written results"),
    # examples/calvin: data conversion (the Hub), then the README journey 4 commands.
    parse(CALVIN, r"^hf download ", no_check, "network (2.7 GB from the Hub)"),
    parse(CALVIN, r"^python -m lerobot\.scripts\.convert_dataset_v21_to_v30 ", check_module,
          "converts the downloaded CALVIN data (LeRobot's own script)"),
    parse(CALVIN, r"^lerobot-edit-dataset ", check_lerobot, "reads the downloaded CALVIN data"),
    parse(CALVIN, r"^lerobot-train ", check_paper_config, "as README journey 4, which runs it at tiny size"),
    parse(CALVIN, r"^git clone ", no_check, "network"),
    parse(CALVIN, r"^pip install ", check_pip_extras, SETUP),
    parse(CALVIN, r"^roboalign calvin eval ", check_roboalign, "as README journey 4"),
    # examples/paper: the paper's alignment recipe (8 GPUs, BridgeV2 from the Hub) and three VLA runs (hours on GPUs).
    parse(PAPER, r"^accelerate launch --config_file examples/accelerate/deepspeed_zero[23]\.yaml -m lerobot_roboalign\.cli "
          r"align (sft|grpo) --config_path=examples/paper/align_", check_accelerated_align,
          "8 GPUs and BridgeV2 from the Hub; README journey 5 runs the same stages at tiny size"),
    parse(PAPER, r"^lerobot-train --config_path=examples/paper/(libero|calvin|real_robot)\.json ", check_paper_config,
          "the paper's 30K-100K-step runs; README journeys 3 and 4 run the LIBERO and CALVIN configs at tiny size"),
)
GROUPS = ("align", "lora", "arm", "libero", "calvin", "reference", "peft")  # in this order: lora, arm, libero, calvin use align's outputs


def rules_of(command: Command) -> list[Rule]:
    return [rule for rule in RULES if rule.matches(command)]


def test_every_readme_command_has_exactly_one_rule():
    assert len(ALL_COMMANDS) > 40  # the blocks were found
    unmatched = [f"{c.doc}: {c.line}" for c in ALL_COMMANDS if len(rules_of(c)) != 1]
    assert not unmatched, "README commands without exactly one rule in tests/test_readme_commands.py:\n" + "\n".join(
        unmatched
    )
    unused = [rule.pattern for rule in RULES if not any(rule.matches(c) for c in ALL_COMMANDS)]
    assert not unused, f"rules that match no README command (stale): {unused}"
    assert {rule.group for rule in RULES if rule.kind == "run"} == set(GROUPS)


@pytest.fixture(scope="module")
def saved_checkpoint(tmp_path_factory) -> Path:
    """A roboalign pretrained_model config, for commands that name a checkpoint the README trains earlier."""
    from lerobot_roboalign import RoboAlignConfig

    path = tmp_path_factory.mktemp("checkpoint")
    RoboAlignConfig(device="cpu").save_pretrained(path)
    return path


PARSED = [c for c in ALL_COMMANDS if [r.kind for r in rules_of(c)] == ["parse"]]


@pytest.mark.parametrize("command", PARSED, ids=[f"{c.doc}:{c.line[:60]}" for c in PARSED])
def test_parse_only_commands_parse(command, saved_checkpoint, monkeypatch):
    monkeypatch.chdir(REPO)  # config paths are relative to the checkout
    (rule,) = rules_of(command)
    assert rule.reason
    rule.check(command.argv(), saved_checkpoint)


def test_recorded_task_and_cameras_are_the_rollouts(monkeypatch):
    """What lerobot-record records is what lerobot-rollout shows the policy: same task string, same cameras."""
    for arm in ("so100", "so101", "koch"):
        record = yaml.safe_load((REPO / "robots" / arm / "record.yaml").read_text())
        assert record["dataset"]["no_stamp"] is True  # the repo_id lerobot-train is given is the one written
        for name in ("rollout.yaml", "rollout_rtc.yaml"):
            rollout = yaml.safe_load((REPO / "robots" / arm / name).read_text())
            assert rollout["task"] == record["dataset"]["single_task"], (arm, name)
            assert rollout["robot"]["cameras"] == record["robot"]["cameras"], (arm, name)


# ---- the verbatim rule: what a tiny argument may change ---------------------------------------------------------
def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    """{"a": {"b": 1}} -> {"a.b": 1}: a config file's values under their command-line names."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def script_defaults(argv: list[str]) -> dict[str, object]:
    """A bash script's ``NAME=${NAME:-default}`` size variables (what its README line runs with)."""
    path = REPO / argv[1]
    found = re.findall(r"^(\w+)=\$\{\1:-(.*?)\}$", path.read_text(), re.M) if path.suffix == ".sh" else []
    return {name: yaml.safe_load(value) if " " not in value else value.split() for name, value in found}


def printed_values(command: Command) -> dict[str, object]:
    """Every value the README prints for a command: its --key=value arguments, its --config_path file's values,
    a bash script's size defaults."""
    argv = command.argv()
    if argv[:1] == ["bash"]:
        return script_defaults(argv)
    values = {}
    for arg in argv:
        if arg.startswith("--") and "=" in arg:
            key, value = arg[2:].split("=", 1)
            values[key] = yaml.safe_load(value)
    if "config_path" in values:
        path = REPO / str(values.pop("config_path"))
        values = {**flatten(yaml.safe_load(path.read_text())), **values}  # JSON is YAML
    return values


def size_at_most(value: object, printed: object) -> bool:
    if isinstance(value, list) or isinstance(printed, list):
        return isinstance(value, list) and isinstance(printed, list) and set(map(str, value)) <= set(map(str, printed))
    numbers = (int, float)
    return isinstance(value, numbers) and isinstance(printed, numbers) and not isinstance(value, bool) \
        and value <= printed  # fmt: skip


def override_violations(command: Command, tiny: tuple[str, ...]) -> list[str]:
    """What in ``tiny`` (``--key=value`` arguments or ``NAME=value`` variables) breaks the verbatim rule: a size
    above the printed one, a printed value changed, or a field in neither allow-list."""
    printed, problems = printed_values(command), []
    for arg in tiny:
        key, raw = arg.removeprefix("--").split("=", 1)
        value = raw.split() if key == "SUITES" else yaml.safe_load(raw)
        if key in SIZE_FIELDS:
            if key in printed and not size_at_most(value, printed[key]):
                problems.append(f"{arg}: a size may only shrink, the README runs {key}={printed[key]}")
        elif key in WHERE_IT_RUNS:
            if key in printed and printed[key] != value:
                problems.append(f"{arg}: changes {key}={printed[key]}, which the README prints")
        else:
            problems.append(f"{arg}: {key} is neither a size (SIZE_FIELDS) nor where it runs (WHERE_IT_RUNS)")
    return problems


RUN = [(c, rules_of(c)[0]) for c in ALL_COMMANDS if [r.kind for r in rules_of(c)] == ["run"]]


@pytest.mark.parametrize(("command", "rule"), RUN, ids=[f"{c.doc}:{c.line[:60]}" for c, _ in RUN])
def test_tiny_sizes_only_shrink(command, rule):
    assert not override_violations(command, rule.tiny + rule.env)


def test_the_verbatim_rule_catches_an_override():
    """A tiny argument that changes a printed value fails the rule, whatever it is: a larger size, a printed
    non-size value (recording without the video record.yaml asks for, a GRPO default the README prints), a field
    in no allow-list, a script variable above its default."""
    train = next(c for c, _ in RUN if c.line.startswith("lerobot-train --policy.type=roboalign --dataset.repo_id=local"))
    record = next(c for c, _ in RUN if c.line.startswith("lerobot-record "))
    grpo = next(c for c, _ in RUN if " align grpo " in c.line)
    libero = next(c for c, _ in RUN if c.line.startswith("bash examples/libero/"))
    assert override_violations(train, ("--steps=2", "--batch_size=32")) == []  # shrink / as printed
    assert override_violations(train, ("--batch_size=64",))  # a size above the printed 32
    assert override_violations(record, ("--dataset.video=false",))  # record.yaml records video
    assert override_violations(record, ("--dataset.num_episodes=51",))  # record.yaml: 50
    assert override_violations(grpo, ("--dataset.num_samples=20000",))  # printed 12800
    assert override_violations(grpo, ("--training.learning_rate=1e-4",))  # no allow-list has it
    assert override_violations(train, ("--policy.device=cuda",)) == []  # the line prints no device
    assert override_violations(libero, ("N_EPISODES=60",)) and override_violations(libero, ("SUITES=libero_90",))
    assert override_violations(libero, TINY_LIBERO_EVAL) == []


def robots_helpers():
    """tests/robots/conftest.py (its virtual ports) and roboalign_virtual_hw (the virtual arms)."""
    robots = REPO / "tests" / "robots"
    if str(robots) not in sys.path:
        sys.path.insert(0, str(robots))
    spec = importlib.util.spec_from_file_location("_robots_conftest", robots / "conftest.py")
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    return helpers, importlib.import_module("roboalign_virtual_hw")


def virtual_arm_config(config_file: Path, out_dir: Path) -> Path:
    """A copy of a robots/ config whose serial ports and cameras are the virtual arm's; nothing else changes (the
    calibration is the one installed in the workspace's LeRobot cache by the README's command)."""
    helpers, _ = robots_helpers()
    config = yaml.safe_load(config_file.read_text())
    for section, port in (("robot", helpers.FOLLOWER_PORT), ("teleop", helpers.LEADER_PORT)):
        if section in config:
            config[section]["port"] = port
    config["robot"]["cameras"] = {name: {"type": "roboalign_synthetic", "width": w, "height": h, "fps": 30}
                                  for name, (h, w) in VIRTUAL_CAMERAS.items()}  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / config_file.name
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_virtual_arm_changes_only_ports_and_cameras(tmp_path):
    for name in ("record.yaml", "rollout.yaml", "rollout_rtc.yaml"):
        printed = flatten(yaml.safe_load((REPO / "robots" / "so101" / name).read_text()))
        virtual = flatten(yaml.safe_load(virtual_arm_config(REPO / "robots" / "so101" / name, tmp_path).read_text()))
        changed = {key.split(".cameras.")[0] + ".cameras" if ".cameras." in key else key
                   for key in printed.keys() | virtual.keys() if printed.get(key) != virtual.get(key)}  # fmt: skip
        assert changed and changed <= VIRTUAL_ARM_FIELDS, (name, changed)


# ---- the commands that run ----------------------------------------------------------------------------------
def tiny_line(command: Command, rule: Rule) -> str:
    line = command.line
    for pattern, replacement, _ in SUBSTITUTIONS:
        line = re.sub(pattern, replacement, line, count=1)
    return " ".join([*rule.env, line, *map(shlex.quote, rule.tiny)])


def test_substitutions_change_only_what_the_table_says():
    """Hub ids become the tiny backbone, accelerate's 8 GPUs 2 CPU ranks; every other word stays as printed."""
    grpo, ddp = (next(c for c, _ in RUN if key in c.line) for key in (" align grpo ", "ddp.yaml"))
    assert tiny_line(grpo, Rule(README, "", "run")) == grpo.line.replace(
        "-m lerobot_roboalign.cli", f"{TWO_CPU_RANKS} {SHIM}")  # fmt: skip
    assert tiny_line(ddp, Rule(README, "", "run")) == f"ACCELERATE_USE_CPU=true {ddp.line}".replace(
        "ddp.yaml", f"ddp.yaml {TWO_CPU_RANKS}")  # fmt: skip
    reason = next(c for c, _ in RUN if " align reason " in c.line)
    assert tiny_line(reason, Rule(README, "", "run")) == reason.line.replace("Qwen/Qwen2.5-VL-7B-Instruct", "tiny-qwen")


def write_shaped_dataset(root: Path, repo_id: str, cameras: dict[str, tuple[int, int]], state_dim: int,
                         action_dim: int, task: str, num_episodes: int = 2, length: int = 12) -> None:  # fmt: skip
    """A LeRobotDataset of a benchmark's shapes (cameras at their own sizes), random frames: the journeys' data."""
    import numpy as np
    from lerobot.datasets import LeRobotDataset

    features = {f"observation.images.{cam}": {"dtype": "image", "shape": (h, w, 3),
                                              "names": ["height", "width", "channels"]}
                for cam, (h, w) in cameras.items()}  # fmt: skip
    features["observation.state"] = {"dtype": "float32", "shape": (state_dim,), "names": None}
    features["action"] = {"dtype": "float32", "shape": (action_dim,), "names": None}
    dataset = LeRobotDataset.create(repo_id, fps=10, features=features, root=root, use_videos=False)
    rng = np.random.default_rng(0)
    for _ in range(num_episodes):
        for _ in range(length):
            frame = {key: rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                     for key, (h, w) in ((f"observation.images.{c}", hw) for c, hw in cameras.items())}  # fmt: skip
            frame.update({"observation.state": rng.standard_normal(state_dim).astype(np.float32),
                          "action": rng.uniform(-1, 1, action_dim).astype(np.float32), "task": task})  # fmt: skip
            dataset.add_frame(frame)
        dataset.save_episode()
    dataset.finalize()


def calvin_cameras() -> dict[str, tuple[int, int]]:
    """The dataset cameras the shipped rename map feeds from CALVIN's static (200x200) and gripper (84x84) views."""
    rename = json.loads((REPO / "examples" / "calvin" / "rename_map.json").read_text())
    sizes = {"observation.images.rgb_static": (200, 200), "observation.images.rgb_gripper": (84, 84)}
    wrong = [key for key in rename.values() if not key.startswith("observation.images.")]
    assert not wrong, f"examples/calvin/rename_map.json maps to {wrong}: a lerobot-train checkpoint has " \
                      "observation.images.* cameras"  # fmt: skip
    return {rename[env_key].removeprefix("observation.images."): hw for env_key, hw in sizes.items()}


LIBERO_TASK = "pick up the black bowl between the plate and the ramekin and place it on the plate"
CALVIN_TASK = "push the button to turn on the led light"


class Workspace:
    """A folder where the README's names exist; runs each group's commands once, in README order."""

    def __init__(self, root: Path):
        from lerobot_roboalign.synthetic import write_synthetic_dataset
        from lerobot_roboalign.tiny_backbone import make_tiny_backbone

        self.root, self.done = root, set()
        home = root / "home"
        self.lerobot_home = home / ".cache" / "huggingface" / "lerobot"
        self.env = {**os.environ, "HOME": str(home), "HF_HOME": str(home / ".cache" / "huggingface"),
                    "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                    "PATH": f"{BIN}:{os.environ['PATH']}"}  # fmt: skip
        for name in ("HF_LEROBOT_HOME", "HF_LEROBOT_CALIBRATION", "LIBERO_CONFIG_PATH", "ACCELERATE_USE_CPU"):
            self.env.pop(name, None)
        for name in ("examples", "robots", "calibration"):
            (root / name).symlink_to(REPO / name, target_is_directory=True)
        make_tiny_backbone(root / "tiny-qwen", "qwen2_5_vl")
        source = root / "data" / "so101"
        write_synthetic_dataset(source, "me/so101")
        for target in ("DIR", f"{self.lerobot_home}/USER/DATASET"):
            shutil.copytree(source, root / target)

    def write_benchmark_data(self, group: str) -> None:
        """LIBERO's data as the Hub's HuggingFaceVLA/libero in LeRobot's cache; CALVIN's in data/calvin_abc."""
        if group == "libero":
            write_shaped_dataset(self.lerobot_home / "HuggingFaceVLA/libero", "HuggingFaceVLA/libero",
                                 {"image": (256, 256), "image2": (256, 256)}, 8, 7, LIBERO_TASK)  # fmt: skip
        if group == "calvin":
            repo_id = json.loads((REPO / "examples" / "paper" / "calvin.json").read_text())["dataset"]["repo_id"]
            write_shaped_dataset(self.root / "data" / "calvin_abc", repo_id, calvin_cameras(), 15, 7, CALVIN_TASK)

    def run_group(self, group: str) -> None:
        if group in ("lora", "arm", "libero", "calvin") and "align" not in self.done:
            self.run_group("align")  # they train on the aligned MLLM, outputs/align/grpo/model
        self.write_benchmark_data(group)
        commands = [c for c in ALL_COMMANDS if rules_of(c)[0].group == group]
        shell: list[str] = []
        for command in commands:  # consecutive shell commands share one shell (variables, exports)
            rule = rules_of(command)[0]
            if rule.virtual_arm:
                self.run_shell(group, shell)
                shell = []
                self.run_on_virtual_arm(command, rule)
            else:
                shell.append(tiny_line(command, rule))
        self.run_shell(group, shell)
        self.done.add(group)

    def run_shell(self, group: str, lines: list[str]) -> None:
        if not lines:
            return
        script = "set -euo pipefail\n" + "".join(f"echo {shlex.quote('+ ' + line)}\n{line}\n" for line in lines)
        result = subprocess.run(["bash", "-c", script], cwd=self.root, env=self.env, capture_output=True, text=True,
                                check=False, timeout=1800)  # fmt: skip
        output = result.stdout + result.stderr
        ran = [line for line in output.splitlines() if line.startswith("+ ")]
        assert result.returncode == 0, f"{group}: failed at\n{ran[-1] if ran else '?'}\n" + output[-6000:]
        assert len(ran) == len(lines)

    def run_on_virtual_arm(self, command: Command, rule: Rule) -> None:
        """The LeRobot command as typed, in this process, on a virtual SO-101 (and leader): LeRobot's robot, motor
        bus and SDK run as on a real arm, only the serial ports and cameras are virtual (tests/robots/). In this
        process HOME is not the workspace's, so LeRobot is pointed at the workspace's cache: the calibration the
        README's commands installed there, and the dataset root LeRobot would pick under that HOME."""
        helpers, hw = robots_helpers()
        argv = command.argv()
        config = next(arg for arg in argv if arg.startswith("--config_path="))
        printed = REPO / config.split("=", 1)[1]
        virtual = virtual_arm_config(printed, self.root / "virtual" / printed.stem)
        args = [f"--config_path={virtual}" if arg == config else arg for arg in argv[1:]]
        follower = hw.VirtualArm.from_file("so101_follower", REPO / "calibration" / "so101_follower.json")
        ports = {helpers.FOLLOWER_PORT: follower}
        where: tuple[str, ...] = ()
        if argv[0] == "lerobot-record":
            from lerobot.scripts.lerobot_record import main

            record = yaml.safe_load(printed.read_text())["dataset"]
            leader = hw.VirtualArm.from_file("so101_leader", REPO / "calibration" / "so101_leader.json",
                                             human_motion=True)  # fmt: skip
            ports[helpers.LEADER_PORT] = leader
            where = (f"--dataset.root={self.lerobot_home / record['repo_id']}",)
        else:
            from lerobot.scripts.lerobot_rollout import main
        assert not override_violations(command, rule.tiny + where)
        saved, cwd = sys.argv, Path.cwd()
        sys.argv = [argv[0], *args, *rule.tiny, *where]
        os.chdir(self.root)
        calibration = self.lerobot_home / "calibration"
        try:
            with hw.virtual_ports(ports), mock.patch("lerobot.robots.robot.HF_LEROBOT_CALIBRATION", calibration), \
                    mock.patch("lerobot.teleoperators.teleoperator.HF_LEROBOT_CALIBRATION", calibration):  # fmt: skip
                main()
        finally:
            sys.argv = saved
            os.chdir(cwd)
        assert len(follower.goal_log) >= 20 and hw.goal_ticks_within(follower), f"{argv[0]} did not drive the arm"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Workspace:
    return Workspace(tmp_path_factory.mktemp("readme"))


@pytest.mark.slow  # several minutes: every runnable README command at tiny size
@pytest.mark.parametrize("group", GROUPS)
def test_readme_journeys_run_at_tiny_size(group, workspace):
    workspace.run_group(group)
    outputs = {
        "align": ["outputs/align/fast", "outputs/align/reasoning.jsonl", "outputs/align/sft/model/action_vocab.json",
                  "outputs/align/grpo/model/action_vocab.json", "outputs/train/vla/checkpoints/last/pretrained_model"],
        "arm": ["outputs/train/so101/checkpoints/last/pretrained_model/policy_postprocessor.json",
                "home/.cache/huggingface/lerobot/local/so101_pick_place/meta/info.json",
                "home/.cache/huggingface/lerobot/calibration/teleoperators/so_leader/my_so101_leader.json"],
        "libero": ["outputs/paper/libero/checkpoints/last", "outputs/eval/libero/libero_spatial/eval_info.json",
                   "outputs/eval/libero/libero_results.json"],
        "calvin": ["outputs/paper/calvin/checkpoints/last", "outputs/eval/calvin/results.json"],
        "reference": ["outputs/train/roboalign/checkpoints/last", "fast_tok", "report"],
        "peft": ["outputs/train/finetune/checkpoints/last/pretrained_model/adapter_config.json"],
        "lora": ["outputs/align_24gb/sft/adapter/adapter_config.json", "outputs/align_24gb/sft/model/action_vocab.json",
                 "outputs/align_24gb/grpo/model/roboalign_format.json", "outputs/train/vla_24gb/checkpoints/last"],
    }[group]  # fmt: skip
    missing = [path for path in outputs if not (workspace.root / path).exists()]
    assert not missing, f"{group} did not write {missing}"
    if group == "arm":  # the record.yaml run recorded its cameras as video
        info = json.loads((workspace.root / outputs[1]).read_text())
        assert info["features"]["observation.images.front"]["dtype"] == "video"
    if group == "libero":
        info = json.loads((workspace.root / outputs[1]).read_text())
        assert info["overall"]["n_episodes"] == 1
    if group == "calvin":
        results = json.loads((workspace.root / outputs[1]).read_text())
        assert len(results["chains"]) == 1
