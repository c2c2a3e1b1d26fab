"""Every command in a ``bash`` block of README.md and examples/*/README.md works as written.

Each command line (continuations joined, comments dropped) must be matched by exactly one rule of ``RULES``:

- ``run``: run at tiny size by ``test_readme_journeys_run_at_tiny_size`` (slow), in a workspace where the README's
  names exist: a tiny random Qwen2.5-VL stands for each Hub model, synthetic LeRobotDatasets are written under the
  names and roots the commands use (``me/so101`` in ``data/so101``, ``USER/DATASET`` and
  ``local/so101_pick_place`` in LeRobot's cache, ...), ``HOME`` is the workspace, so that ``~/.cache/...`` holds a
  calibration file where ``lerobot-calibrate`` writes it. ``SUBSTITUTIONS`` lists every change made to a command's
  text; ``Rule.tiny`` arguments are appended (draccus keeps the last value of a repeated flag). ``lerobot-record``
  and ``lerobot-rollout`` of the real-arm journey run as typed on virtual SO-101 arms (tests/robots/: LeRobot's
  robot, motor bus and SDK, only the serial ports and cameras virtual): the policy trains on that recording.
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
TINY_GRPO = ("--dataset.num_samples=8", "--training.max_steps=1", "--training.per_device_train_batch_size=2",
             "--grpo.num_generations=2", "--grpo.max_completion_length=0", "--training.save_steps=1",
             "--training.logging_steps=1")  # fmt: skip

# On virtual arms (the config's ports and cameras replaced, tests/robots/conftest.py's virtualize): one episode of
# 2 s moved by a virtual leader's "hand", then a rollout of 2 s.
VIRTUAL_CAMERAS = {"front": (64, 64), "wrist": (64, 64)}  # record.yaml's cameras, small
TINY_RECORD = ("--dataset.num_episodes=1", "--dataset.episode_time_s=2", "--dataset.reset_time_s=0",
               "--dataset.video=false")  # fmt: skip
TINY_ROLLOUT = ("--duration=2", "--device=cpu")

# (pattern, replacement, why): every change made to the text of a command that runs.
SUBSTITUTIONS = (
    (r"Qwen/Qwen2\.5-VL-7B-Instruct", "tiny-qwen", "a tiny random Qwen2.5-VL (`roboalign make-tiny-backbone`)"),
    (r"^accelerate launch .*? -m lerobot_roboalign\.cli ", "roboalign ",
     "one CPU process: the accelerate configs are launched by tests/test_accelerate.py"),
    (r"^accelerate launch .*?\$\(which lerobot-train\) ", "lerobot-train ",
     "one CPU process: 2-rank DDP of lerobot-train is tests/test_accelerate.py"),
)  # fmt: skip


@dataclass(frozen=True)
class Rule:
    doc: str
    pattern: str  # re.search on the command line
    kind: str  # run | parse
    reason: str = ""  # parse: why it is not run
    check: Callable[[list[str], Path], object] | None = None  # parse: what is checked
    tiny: tuple[str, ...] = ()  # run: appended arguments
    group: str = ""  # run: commands of a group run in order in one shell
    virtual_arm: bool = False  # run: in this process, the arms' serial ports and cameras virtual (tests/robots/)

    def matches(self, command: Command) -> bool:
        return command.doc == self.doc and re.search(self.pattern, command.line) is not None


def run(doc: str, pattern: str, group: str, tiny: tuple[str, ...] = (), virtual_arm: bool = False) -> Rule:
    return Rule(doc, pattern, "run", tiny=tiny, group=group, virtual_arm=virtual_arm)


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
    run(README, r"^lerobot-record --config_path=robots/so101/record\.yaml$", "arm", TINY_RECORD, virtual_arm=True),
    run(README, r"^roboalign calibration check ~/\S+ --robot\.type=so101_follower$", "arm"),
    run(README, r"^lerobot-train --policy\.type=roboalign --dataset\.repo_id=local/so101_pick_place --policy\.vlm",
        "arm", TINY_VLA),  # fmt: skip
    run(README, r"^roboalign calibration check ~/\S+ --robot\.type=so101_follower --checkpoint=", "arm"),
    run(README, r"^lerobot-rollout --config_path=robots/so101/rollout\.yaml ", "arm", TINY_ROLLOUT, virtual_arm=True),
    parse(README, r"^roboalign rollout check --config_path=robots/so101/rollout\.yaml ", check_preflight,
          HARDWARE + "; tests/robots/test_preflight.py runs every check on virtual SO-101 and Koch arms"),
    parse(README, r"^python -m lerobot_roboalign\.async_inference --", check_policy_server,
          "a gRPC server that waits for a robot (tests/robots/ run it with LeRobot's client on loopback)"),
    parse(README, r"^python -m lerobot_roboalign\.async_inference client ", check_robot_client, HARDWARE),
    # Journeys 3 and 4: LIBERO and CALVIN.
    parse(README, r"^python -m lerobot_roboalign\.libero_setup$", check_module, SETUP),
    parse(README, r"^export MUJOCO_GL=egl$", no_check, "shell set-up"),
    run(README, r"^lerobot-train --config_path=examples/paper/libero\.json ", "benchmarks", TINY_VLA),
    parse(README, r"^bash examples/libero/eval_all_suites\.sh ", check_bash_script,
          "2,000 LIBERO episodes; tests/benchmarks/test_libero_script.py and test_libero_closed_loop.py run it small"),
    parse(README, r"^git clone ", no_check, "network"),
    parse(README, r"^pip install (-e '\.\[calvin\]'|--no-deps -e calvin_env)$", check_pip_extras, SETUP),
    run(README, r"^lerobot-train --config_path=examples/paper/calvin\.json ", "benchmarks", TINY_VLA),
    parse(README, r"^roboalign calvin eval ", check_roboalign,
          "CALVIN's simulator, hours; tests/benchmarks/test_calvin_sim.py runs 2 capped chains where it is installed"),
    # Journey 5: alignment, then the VLA.
    run(README, r"^roboalign tokenizer fit .*--dataset\.roots='\[data/so101\]' ", "align"),
    run(README, r"^roboalign align reason ", "align", TINY_REASON),
    run(README, r"^accelerate launch .* align sft ", "align", TINY_SFT),
    run(README, r"^accelerate launch .* align grpo ", "align", TINY_GRPO),
    run(README, r"^roboalign align generate ", "align", ("--max_new_tokens=8",)),
    run(README, r"^accelerate launch --config_file examples/accelerate/ddp\.yaml .*lerobot-train", "align", TINY_VLA),
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
GROUPS = ("align", "arm", "benchmarks", "reference", "peft")  # run in this order: arm and benchmarks load align's model


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


# ---- the commands that run ----------------------------------------------------------------------------------
def tiny_line(command: Command, rule: Rule) -> str:
    line = command.line
    for pattern, replacement, _ in SUBSTITUTIONS:
        line = re.sub(pattern, replacement, line)
    return " ".join([line, *map(shlex.quote, rule.tiny)])


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
        self.env.pop("HF_LEROBOT_HOME", None)
        lerobot_home = home / ".cache" / "huggingface" / "lerobot"
        for name in ("examples", "robots", "calibration"):
            (root / name).symlink_to(REPO / name, target_is_directory=True)
        make_tiny_backbone(root / "tiny-qwen", "qwen2_5_vl")
        source = root / "data" / "so101"
        write_synthetic_dataset(source, "me/so101")
        for target in ("DIR", "data/calvin_abc", *(f"{lerobot_home}/{repo}" for repo in
                       ("USER/DATASET", "HuggingFaceVLA/libero"))):  # fmt: skip
            shutil.copytree(source, root / target)
        calibration = lerobot_home / "calibration" / "robots" / "so_follower" / "my_so101_follower.json"
        calibration.parent.mkdir(parents=True)
        shutil.copyfile(REPO / "calibration" / "so101_follower.json", calibration)  # as lerobot-calibrate writes it

    def run_group(self, group: str) -> None:
        if group in ("arm", "benchmarks") and "align" not in self.done:
            self.run_group("align")  # they train on the aligned MLLM, outputs/align/grpo/model
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
                                check=False, timeout=1200)  # fmt: skip
        output = result.stdout + result.stderr
        ran = [line for line in output.splitlines() if line.startswith("+ ")]
        assert result.returncode == 0, f"{group}: failed at\n{ran[-1] if ran else '?'}\n" + output[-6000:]
        assert len(ran) == len(lines)

    def run_on_virtual_arm(self, command: Command, rule: Rule) -> None:
        """The LeRobot command as typed, in this process, on a virtual SO-101 (and leader): LeRobot's robot, motor
        bus and SDK run as on a real arm, only the serial ports and cameras are virtual (tests/robots/)."""
        robots = REPO / "tests" / "robots"
        if str(robots) not in sys.path:
            sys.path.insert(0, str(robots))
        import roboalign_virtual_hw as hw

        spec = importlib.util.spec_from_file_location("_robots_conftest", robots / "conftest.py")
        helpers = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(helpers)
        argv = command.argv()
        config = next(arg for arg in argv if arg.startswith("--config_path="))
        virtual = helpers.virtualize(REPO / config.split("=", 1)[1], self.root / "virtual" / argv[0], VIRTUAL_CAMERAS)
        args = [f"--config_path={virtual}" if arg == config else arg for arg in argv[1:]]
        follower = hw.VirtualArm.from_file("so101_follower", REPO / "calibration" / "so101_follower.json")
        ports = {helpers.FOLLOWER_PORT: follower}
        if argv[0] == "lerobot-record":
            from lerobot.scripts.lerobot_record import main

            record = yaml.safe_load((REPO / config.split("=", 1)[1]).read_text())["dataset"]
            leader = hw.VirtualArm.from_file("so101_leader", REPO / "calibration" / "so101_leader.json",
                                             human_motion=True)  # fmt: skip
            ports[helpers.LEADER_PORT] = leader
            args.append(f"--dataset.root={self.lerobot_home / record['repo_id']}")  # LeRobot's cache, as by default
        else:
            from lerobot.scripts.lerobot_rollout import main
        saved, cwd = sys.argv, Path.cwd()
        sys.argv = [argv[0], *args, *rule.tiny]
        os.chdir(self.root)
        try:
            with hw.virtual_ports(ports):
                main()
        finally:
            sys.argv = saved
            os.chdir(cwd)
        assert len(follower.goal_log) >= 20 and hw.goal_ticks_within(follower), f"{argv[0]} did not drive the arm"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Workspace:
    return Workspace(tmp_path_factory.mktemp("readme"))


@pytest.mark.slow  # a few minutes: every runnable README command at tiny size
@pytest.mark.parametrize("group", GROUPS)
def test_readme_journeys_run_at_tiny_size(group, workspace):
    workspace.run_group(group)
    outputs = {
        "align": ["outputs/align/fast", "outputs/align/reasoning.jsonl", "outputs/align/sft/model/action_vocab.json",
                  "outputs/align/grpo/model/action_vocab.json", "outputs/train/vla/checkpoints/last/pretrained_model"],
        "arm": ["outputs/train/so101/checkpoints/last/pretrained_model/policy_postprocessor.json",
                "home/.cache/huggingface/lerobot/local/so101_pick_place/meta/info.json"],
        "benchmarks": ["outputs/paper/libero/checkpoints/last", "outputs/paper/calvin/checkpoints/last"],
        "reference": ["outputs/train/roboalign/checkpoints/last", "fast_tok", "report"],
        "peft": ["outputs/train/finetune/checkpoints/last/pretrained_model/adapter_config.json"],
    }[group]  # fmt: skip
    missing = [path for path in outputs if not (workspace.root / path).exists()]
    assert not missing, f"{group} did not write {missing}"
