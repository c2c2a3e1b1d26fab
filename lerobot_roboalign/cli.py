"""The ``roboalign`` command: one entry point, one sub-command per pipeline stage.

Each sub-command lives in its own module and exposes ``main(argv)``; they are imported
lazily so that ``roboalign --help`` stays fast and a stage's heavy imports (TRL, MuJoCo)
are paid only when that stage runs. Arguments after the sub-command are parsed by the
stage's draccus config, so every field is set as ``--section.field=value``. A command's
module imports no torch, transformers, datasets, TRL, LeRobot or MuJoCo before it has parsed
(its config in a stdlib-only module, e.g. ``align/config.py``), so ``--help`` prints at once
(``tests/test_cli_help.py`` checks every command registered here).
"""

import importlib
import sys

HELP_FLAGS = ("-h", "--help", "help")

COMMANDS: dict[tuple[str, ...], tuple[str, str]] = {
    ("make-tiny-backbone",): ("lerobot_roboalign.tiny_backbone", "Write a tiny random VLM checkpoint (Qwen2.5-VL, Qwen3-VL, SmolVLM) for offline tests."),
    ("tokenizer", "fit"): ("lerobot_roboalign.fast_cli", "Fit a FAST action tokenizer on LeRobotDatasets."),
    ("tokenizer", "report"): ("lerobot_roboalign.fast_cli", "Tokens per chunk and reconstruction error over a range of scales, with a plot."),
    ("align", "reason"): ("lerobot_roboalign.align.commands", "Generate zero-shot reasoning texts for alignment samples."),
    ("align", "sft"): ("lerobot_roboalign.align.commands", "Supervised fine-tuning on <think>..</think><answer>FAST tokens</answer>."),
    ("align", "grpo"): ("lerobot_roboalign.align.commands", "GRPO with the action-token prefix reward (TRL GRPOTrainer)."),
    ("align", "plan"): ("lerobot_roboalign.align.commands", "GPU memory per GPU of SFT, GRPO and the VLA for a model and accelerate configs (no weights loaded)."),
    ("align", "push"): ("lerobot_roboalign.hub", "Push an aligned MLLM to its own Hub repository, so policies on it can be shared."),
    ("align", "generate"): ("lerobot_roboalign.align.commands", "Print the reasoning and decoded action chunk of an aligned MLLM."),
    ("calibration", "check"): ("lerobot_roboalign.calibration", "Validate (and optionally install) a LeRobot calibration file."),
    ("rollout", "check"): ("lerobot_roboalign.preflight", "Pre-flight before lerobot-rollout moves an arm: same flags; calibration, cameras, limits, latency."),
    ("files", "export"): ("lerobot_roboalign.shipped", "Write the arm configs (robots/) and example calibration files (calibration/) into DIR."),
    ("calvin", "eval"): ("lerobot_roboalign.calvin.evaluate", "Run the CALVIN ABC->D protocol (1000 chains of 5 instructions)."),
    ("sim", "record"): ("lerobot_roboalign.sim_cli", "Record scripted SO-101 demonstrations into a LeRobotDataset v3."),
    ("sim", "vqa"): ("lerobot_roboalign.scene_vqa", "Scene questions (LLaVA JSON + PNG) about varied simulated SO-101 frames, for align sft --vqa.*."),
    ("demo",): ("lerobot_roboalign.demo", "The whole RoboAlign pipeline offline on a simulated SO-101."),
    ("study",): ("lerobot_roboalign.study", "The pre-registered transfer study (docs/study.md): 4 rows x 4 head seeds, resumable."),
}


def _usage(group: tuple[str, ...] = ()) -> str:
    """The command list, or only the commands of ``group`` (e.g. ``tokenizer``)."""
    name = " ".join(("roboalign", *group))
    lines = [f"usage: {name} <command> [--field=value ...]", "", "commands:"]
    for words, (_, help_text) in COMMANDS.items():
        if words[: len(group)] == group:
            lines.append(f"  {' '.join(words):<22} {help_text}")
    return "\n".join(lines)


def _is_group(words: tuple[str, ...]) -> bool:
    return any(len(command) > len(words) and command[: len(words)] == words for command in COMMANDS)


def _resolve(argv: list[str]) -> tuple[tuple[str, ...], list[str]]:
    for length in (2, 1):
        words = tuple(argv[:length])
        if words in COMMANDS:
            return words, argv[length:]
    group = tuple(argv[:1])
    if _is_group(group):
        what = f"unknown {group[0]} command {argv[1]!r}" if len(argv) > 1 else f"{group[0]!r} needs a command"
        raise SystemExit(f"roboalign: {what}\n\n{_usage(group)}")
    raise SystemExit(f"roboalign: unknown command {argv[0]!r}\n\n{_usage()}")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in HELP_FLAGS:
        print(_usage())
        return
    if _is_group(tuple(argv[:1])) and argv[1:2] and argv[1] in HELP_FLAGS:
        print(_usage(tuple(argv[:1])))  # like `git remote --help`: a group's help lists its commands
        return
    words, rest = _resolve(argv)
    if not any(arg in ("-h", "--help") for arg in rest):
        # As LeRobot's plugin discovery does: checkpoints a command loads name roboalign's config, envs and steps.
        importlib.import_module("lerobot_roboalign").register()
    module = importlib.import_module(COMMANDS[words][0])
    entry = getattr(module, "main_" + words[-1].replace("-", "_"), None) or module.main
    saved = sys.argv
    sys.argv = [" ".join(("roboalign", *words)), *rest]  # argparse's prog: `usage: roboalign align sft ...`
    try:
        entry(rest)
    finally:
        sys.argv = saved


if __name__ == "__main__":
    main()
