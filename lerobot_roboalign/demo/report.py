"""The demo's report.md: every number in it comes from a stage's recorded result."""

import json
from dataclasses import asdict

from ..envs.variation import ALIGNMENT_SEED_BASE, ALIGNMENT_VARIATION, VLA_SEED_BASE
from ..runner import TINY_VLM_LAYER
from .config import ALIGN_WITH_STATE, TASKS, DemoConfig, corpus_episodes, recorded_episodes
from .statistics import paired_counts, wilson_interval


def success_cell(counts: dict) -> str:
    """Successes out of episodes, the rate and its 95% Wilson interval."""
    n, k = counts["n_episodes"], counts["successes"]
    low, high = wilson_interval(k, n)
    return f"{k}/{n} = {100 * k / n:.0f}% [{100 * low:.0f}, {100 * high:.0f}]"


def paired_cell(a: dict, b: dict) -> str:
    """Same seeds: episodes B won that A lost, and lost that A won."""
    won, lost = paired_counts(a["episodes"], b["episodes"])
    return f"+{won} / -{lost}"


def number(value: float | None, digits: int = 3) -> str:
    """A measured value for a table; n/a where there is none (nothing decoded)."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def interval(d: dict) -> str:
    """A paired bootstrap's mean and 95% interval."""
    return f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"


def alignment_lines(scores: dict) -> list[str]:
    """The score stage's table and paired comparisons."""
    lines = [
        f"Greedy completions on {scores['n_frames']} frames of held-out episodes {scores['heldout_episodes']} of the "
        f"alignment corpus (alignment trained on its other episodes; the blind baselines fitted on frames of {len(scores['train_episodes'])} of them). Completion cap: "
        f"{scores['cap']} tokens; the longest target completion (reasoning + markup + FAST span) is "
        f"{scores['longest_target']} tokens. L1: mean |decoded - dataset chunk| in FAST's normalised units "
        "([-1, 1] per action dimension), over the completions that decode; \"all frames\" counts a span that does "
        "not decode as the all-zero chunk (openpi's fallback), so decoding only on easy frames cannot help. "
        "Baselines know the task but neither image nor state.",
        "",
        "| model | format rate | action-token prefix accuracy | decoded L1 | L1, all frames | decodes | "
        "reasoning tokens |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in scores["models"].items():
        lines.append(
            f"| {name} | {number(s['format'])} | {number(s['action'])} | {number(s['l1'])} | {number(s['l1_all'])} | "
            f"{number(s['decode_rate'], 2)} | {number(s['reasoning_tokens'], 1)} |"
        )
    for name, s in scores["baselines"].items():
        lines.append(f"| {name} | n/a | {number(s['action'])} | {number(s['l1'])} | {number(s['l1_all'])} | "
                     f"{number(s['decode_rate'], 2)} | n/a |")
    lines += ["", "Each model against the blind baselines, paired over the same frames (positive = the model is "
              "better; 95% bootstrap intervals):", ""]
    for name, versus in scores["versus_blind"].items():
        a, l1, decoded = versus["action"], versus["l1_all"], versus["l1_decoded"]
        on_decoded = f"{interval(decoded)} on the {decoded['n']} frames it decodes" if decoded else "n/a (nothing decodes)"
        lines.append(f"- {name}: prefix accuracy minus the most frequent sequence's {interval(a)}; mean chunk's L1 "
                     f"minus the model's: all frames {interval(l1)}, {on_decoded}.")
    d = scores["grpo_minus_sft_action"]
    lines += [
        "",
        f"GRPO minus SFT, action-token prefix accuracy, paired over the same {d['n']} frames: {d['mean']:+.3f} "
        f"(95% bootstrap interval [{d['low']:+.3f}, {d['high']:+.3f}]); GRPO better on {d['better']} frames, "
        f"worse on {d['worse']}.",
    ]
    return lines


def curve_lines(curves: dict[str, dict[int, dict]]) -> list[str]:
    """Success of each row's checkpoints on the same seeds: is a row still improving when training stops?"""
    steps = sorted(next(iter(curves.values())))
    lines = ["| policy | task | " + " | ".join(f"step {step}" for step in steps) + " |", "|---|---|" + "---|" * len(steps)]
    for name, curve in curves.items():
        for task in TASKS:
            cells = [f"{curve[step][task]['successes']}/{curve[step][task]['n_episodes']}" for step in steps]
            lines.append(f"| {name} | {task} | " + " | ".join(cells) + " |")
    return lines


def probe_lines(probe: dict) -> list[str]:
    """The action-chunk probe's table, per backbone and layer."""
    layers = sorted(next(iter(probe["backbones"].values())), key=int)
    lines = [
        f"Ridge regression from features to the action chunk of the VLA demonstrations ({probe['n_frames']} frames; "
        f"fitted on their training episodes, R^2 on the {probe['n_heldout']} frames of the held-out ones; "
        "regularisation chosen on training episodes only). Image tokens are taken as the VLA reads them (its prompt and image size, the "
        "cut layer after the final norm). The head also gets the robot state and the instruction: from those alone "
        f"the probe reaches R^2 {probe['state_and_task']:.3f}. Cells: image tokens alone / state + task + image "
        f"tokens. The VLA's head reads layer {TINY_VLM_LAYER}.",
        "",
        "| backbone | " + " | ".join(f"layer {layer}" for layer in layers) + " |",
        "|---|" + "---|" * len(layers),
    ]
    for name, by_layer in probe["backbones"].items():
        cells = [f"{by_layer[layer]['image']:.3f} / {by_layer[layer]['with_context']:.3f}" for layer in layers]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def camera_off_lines(evals: dict[str, dict], camera_off: dict[str, dict]) -> list[str]:
    """Each VLA with the camera and with a grey frame, paired over the same seeds."""
    lines = [
        "Each VLA's final checkpoint again, on the same seeds, with the camera sending a uniform grey frame "
        "(`--env.camera_off=true`). Cells: successes with the camera / with it off (episodes won only with the "
        "camera / only without it). Success that survives the grey frame came from the state and instruction.",
        "",
        "| policy | " + " | ".join(TASKS) + " |",
        "|---|" + "---|" * len(TASKS),
    ]
    for name, off in camera_off.items():
        cells = [f"{evals[name][task]['successes']}/{evals[name][task]['n_episodes']} / "
                 f"{off[task]['successes']}/{off[task]['n_episodes']} ({paired_cell(off[task], evals[name][task])})"
                 for task in TASKS]  # fmt: skip
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def cube_probe_lines(cube: dict) -> list[str]:
    """The cube-position probe's table, per backbone and training-set size."""
    sizes = cube["train_sizes"]
    lines = [
        f"Ridge regression from the image tokens of layer {TINY_VLM_LAYER} (kept apart, one block of weights per "
        f"token) to the cube's (x, y), on first frames of fresh reach_and_close episodes, where the arm is at home "
        f"and only the cube moves; R^2 on {cube['n_test']} held-out frames, fitted on {' or '.join(map(str, sizes))} "
        f"frames ({sizes[0]}: at most as many as the VLA demonstrations' reach_and_close episodes). With the camera off the same probe "
        f"gives R^2 {next(iter(cube['camera_off'].values())):.3f}.",
        "",
        "| backbone | " + " | ".join(f"fitted on {n} frames" for n in sizes) + " |",
        "|---|" + "---|" * len(sizes),
    ]
    for name, by_size in cube["backbones"].items():
        lines.append(f"| {name} | " + " | ".join(f"{by_size[n]:.3f}" for n in sorted(by_size, key=int)) + " |")
    return lines


def report_header(cfg: DemoConfig) -> list[str]:
    """Title and mode; a quick run says first that its numbers are not results (0/N rows are expected there)."""
    lines = ["# RoboAlign demo (simulated SO-101, tiny random backbone)", ""]
    if cfg.quick:
        lines += [
            "**Quick sizes: this run checks that every stage runs, and says nothing about the method.** Its few "
            "episodes and training steps leave the trained rows near 0 successes by design; the method's numbers "
            "come from the default sizes (`roboalign demo`, docs/results.md).",
            "",
        ]
    return [*lines, f"Mode: {'quick' if cfg.quick else 'full'}; sizes: `{json.dumps(asdict(cfg.sizes))}`.", "",
            *structure_lines(cfg)]  # fmt: skip


def structure_lines(cfg: DemoConfig) -> list[str]:
    """The two recordings and the one prompt, as in the transfer study (docs/study.md)."""
    sizes, v = cfg.sizes, ALIGNMENT_VARIATION
    corpus, demos = sum(corpus_episodes(sizes).values()), sum(recorded_episodes(sizes).values())
    return [
        f"Structure (as the transfer study, docs/study.md): the MLLM is aligned on a corpus of {corpus} scripted "
        f"episodes of both tasks in varied scenes ({v.colours} cube colours, up to {v.distractors} distractor blocks, "
        f"{'rephrased instructions, ' if v.rephrase else ''}{v.goals} goal places; reset seeds from "
        f"{ALIGNMENT_SEED_BASE:,}), and the VLA heads are trained on {demos} demonstrations of the target tasks' own "
        f"scene (seeds from {VLA_SEED_BASE:,}), none of which the corpus contains. Alignment and VLA see one prompt "
        f"and image size (the aligned model's `roboalign_format.json`; state text in the prompt: "
        f"{'yes' if ALIGN_WITH_STATE else 'no'}). The VLA demonstrations are fewer than in the earlier demo, which "
        "aligned and trained the heads on one recording of 300 reach_and_close and 30 pick_and_place episodes.",
        "",
    ]


def format_report(
    cfg: DemoConfig, evals: dict[str, dict], scores: dict, walls: dict[str, float], pairs: list[tuple[str, str]],
    elapsed_s: float, curves: dict[str, dict[int, dict]], probe: dict, camera_off: dict[str, dict],
) -> str:
    """The whole report.md, section by section, from the stages' results and wall times."""
    lines = [
        *report_header(cfg),
        "What the policy sees: one 96x96 front camera image, the 14-D robot state (`agent_pos`: joints and "
        "gripper, no cube or goal position) and the instruction. pick_and_place names its goal in the "
        "instruction (one of a few places on the table); the cube position is only in the image.",
        "",
        "## Closed-loop success (lerobot-eval, held-out seeds)",
        "",
        "| policy | " + " | ".join(TASKS) + " |",
        "|---|" + "---|" * len(TASKS),
    ]
    for name, counts in evals.items():
        lines.append(f"| {name} | " + " | ".join(success_cell(counts[task]) for task in TASKS) + " |")
    lines += [
        "",
        "Paired over the same seeds (episodes the second row won that the first lost / lost that it won):",
        "",
        "| comparison | " + " | ".join(TASKS) + " |",
        "|---|" + "---|" * len(TASKS),
    ]
    for a, b in pairs:
        cells = [paired_cell(evals[a][task], evals[b][task]) for task in TASKS]
        lines.append(f"| {b} vs {a} | " + " | ".join(cells) + " |")
    lines += ["", "## Does the VLA use the camera? (camera off, same seeds)", "", *camera_off_lines(evals, camera_off)]
    lines += ["", "## Success against VLA training steps (same seeds)", "", *curve_lines(curves)]
    lines += ["", "## Alignment of each backbone (held-out episodes)", "", *alignment_lines(scores)]
    lines += ["", "## What the head can read: linear probes for the action chunk", "", *probe_lines(probe)]
    lines += ["", "## Is the cube in the image tokens? Linear probes for its position", "", *cube_probe_lines(probe["cube"])]
    lines += ["", "## Wall time per stage", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {stage} | {seconds:.0f} |" for stage, seconds in walls.items()]
    lines += ["", f"Elapsed: {elapsed_s / 60:.1f} min for this invocation (stages run two at a time, so the stage "
              f"times add up to {sum(walls.values()) / 60:.1f} min; a resumed run counts only what it redid).", ""]
    return "\n".join(lines)
