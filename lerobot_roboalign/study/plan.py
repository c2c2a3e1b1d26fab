"""The study's stages, their inputs and settings, and what each is expected to cost.

A stage's fingerprint covers its settings and its inputs' fingerprints (the demo's ``Stages``), so changing
one size redoes that stage and everything downstream of it, and nothing else. Import-light like config.py.
"""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .config import TASKS, VQA_BASE_ARGS, StudyConfig

# Seconds per unit of each kind of stage, measured in the demo's default run on 2 CPU cores (docs/demo/report.md:
# record 59 s for ~4140 frames, SFT 518 s for 1400 x 8 samples, GRPO 57 s for 64 x 8 completions, a head 404 s for
# 4500 steps, evaluation 48 s for 40 episodes, scoring 8 s for 2 x 128 greedy frames, probes 16 s for 3 x 800
# frames). A finished run replaces them with its own measurements (cost_model.json), used by the next run.
DEFAULT_RATES = {
    "record": 0.015,  # per frame recorded (reach_and_close ~9 frames an episode, pick_and_place ~48)
    "record_alignment": 0.015,  # per frame (the varied scenes record as fast)
    "vqa_data": 0.02,  # per scene
    "backbone": 1.0,  # per backbone
    "vqa_base": 0.046,  # per sample
    "tokenizer": 0.0003,  # per frame
    "reason": 0.0008,  # per frame
    "sft": 0.046,  # per sample
    "grpo": 0.11,  # per completion
    "matched_sft": 0.046,  # per sample
    "score": 0.03,  # per frame and model
    "prompt_check": 1.0,
    "head": 0.032,  # per lerobot-train step: the demo's 0.09 without the feature cache, 2.84x faster with it
    # (benchmarks/results/policy.md, lerobot-train end to end)
    "eval": 1.2,  # per episode
    "probe_curve": 0.007,  # per frame and backbone
    "vqa_score": 0.05,  # per held-out scene and backbone (a guess: not measured yet)
}
# Seconds a stage takes whatever its size (process start-up, imports, model loading), measured in a --tiny run
# (2 episodes per task, 4 training steps) with 2 stages at once on 2 CPU cores shared with other work, 2026-12-07;
# the rates above apply to the units beyond it. vqa_data and vqa_base: not measured yet (guesses).
OVERHEAD_S = {
    "record": 120.0, "record_alignment": 60.0, "backbone": 2.0, "tokenizer": 1.0, "reason": 1.0, "sft": 9.0,
    "grpo": 20.0, "matched_sft": 10.0, "score": 24.0, "prompt_check": 1.0, "head": 55.0, "eval": 70.0,
    "probe_curve": 4.0, "vqa_data": 20.0, "vqa_base": 9.0, "vqa_score": 10.0,
}  # fmt: skip
FRAMES_PER_EPISODE = {"reach_and_close": 9, "pick_and_place": 48}
RESULT_KINDS = ("eval", "score", "probe_curve", "vqa_score")  # what the report reads; the plan keeps their inputs
COST_MODEL_FILE = "cost_model.json"


@dataclass(frozen=True)
class PlannedStage:
    name: str
    kind: str  # the work that runs it and its line in the cost model
    after: tuple[str, ...]  # stages whose results it reads (and whose fingerprints enter its own)
    settings: dict = field(hash=False)
    units: float = 1.0  # what its time grows with, in the cost model's unit for its kind
    outputs: tuple[str, ...] = ()  # paths under the output directory it writes (deleted before a fresh start)


def frames(episodes_per_task: int) -> int:
    return sum(FRAMES_PER_EPISODE[task] * episodes_per_task for task in TASKS)


def row_backbone_stage(cfg: StudyConfig, row: str) -> str:
    """The stage whose result holds a row's frozen backbone."""
    base = "vqa_base" if cfg.base == "vqa" else "backbone"
    return {"base": base, "sft": "sft", "roboalign": "grpo", "matched_sft": "matched_sft"}[row]


def alignment_stages(cfg: StudyConfig) -> list[PlannedStage]:
    """Data, base backbone and alignment: everything before the heads."""
    s = cfg.sizes
    record = {"image": s.image_size, "seeds": cfg.seeds("vla")}
    probe_episodes = max(s.probe_demos) + s.probe_test_episodes_per_task
    alignment_frames = frames(s.alignment_episodes_per_task)
    grpo = {"steps": cfg.grpo_steps, "samples": cfg.grpo_samples, "generations": s.grpo_generations}
    plan = [
        PlannedStage("record_vla", "record", (), {**record, "episodes": s.vla_episodes_per_task},
                     frames(s.vla_episodes_per_task), ("vla_dataset", "feature_cache")),
        PlannedStage("record_probe", "record", (), {**record, "seeds": cfg.seeds("probe"), "episodes": probe_episodes},
                     frames(probe_episodes), ("probe_dataset",)),
        PlannedStage("record_alignment", "record_alignment", (), {"image": s.image_size, "episodes":
                     s.alignment_episodes_per_task, "seeds": cfg.seeds("alignment")}, alignment_frames,
                     ("alignment_dataset",)),
        PlannedStage("backbone", "backbone", (), {"seed": cfg.seed}, 1, ("backbone",)),
        PlannedStage("tokenizer", "tokenizer", ("record_alignment",), {"chunk": s.chunk_size}, alignment_frames,
                     ("fast_tokenizer",)),
        PlannedStage("reason", "reason", ("record_alignment",), {"source": "scripted"}, alignment_frames,
                     ("reasoning.jsonl",)),
    ]  # fmt: skip
    uses_vqa = cfg.base == "vqa" or s.vqa_ratio > 0
    if uses_vqa:
        plan.append(PlannedStage("vqa_data", "vqa_data", (), {"scenes": s.vqa_episodes, "image": s.image_size,
                                 "seeds": cfg.seeds("vqa")}, s.vqa_episodes, ("vqa",)))  # fmt: skip
    if cfg.base == "vqa":
        plan.append(PlannedStage("vqa_base", "vqa_base", ("backbone", "vqa_data", "tokenizer"), {"steps": s.vqa_base_steps, "args": list(VQA_BASE_ARGS)},
                                 s.vqa_base_steps * s.sft_batch_size, ("vqa_base",)))  # fmt: skip
    sft = {"steps": s.sft_steps, "batch": s.sft_batch_size, "vqa_ratio": s.vqa_ratio, "state": cfg.state_text,
           "holdout": s.holdout_every, "seed": cfg.seed}  # fmt: skip
    inputs = (
        row_backbone_stage(cfg, "base"),
        "tokenizer",
        "reason",
        *("vqa_data",) * uses_vqa,
        "record_alignment",
    )
    if cfg.row_order() == ["base"]:  # the base row alone (pilot P2): nothing to align
        return plan
    plan.append(PlannedStage("sft", "sft", inputs, sft, s.sft_steps * s.sft_batch_size, ("align_sft",)))
    completions = cfg.grpo_steps * s.grpo_generations * 2  # the demo's GRPO batch: 2 prompts x generations
    aligned = ("sft", "reason", "record_alignment")
    if {"roboalign", "matched_sft"} & set(cfg.rows):
        plan.append(PlannedStage("grpo", "grpo", aligned, grpo, completions, ("align_grpo",)))
    if "matched_sft" in cfg.rows:  # the prompts GRPO drew (the same draw), as many samples as its completions
        plan.append(PlannedStage("matched_sft", "matched_sft", (*aligned, "tokenizer"), grpo, completions,
                                 ("align_matched_sft",)))  # fmt: skip
    scored = (
        "sft",
        *(stage.name for stage in plan if stage.name in ("grpo", "matched_sft")),
    )  # before/after GRPO
    plan.append(PlannedStage("score", "score", (*scored, "tokenizer", "reason", "record_alignment", "record_vla"),
                             {"frames": s.score_frames, "state": cfg.state_text}, s.score_frames * 2 * len(scored)))  # fmt: skip
    return plan


def head_stages(cfg: StudyConfig) -> list[PlannedStage]:
    """Per row: a head per head seed on the frozen backbone, each evaluated on the same seeds; the probe curve."""
    s = cfg.sizes
    rows = cfg.row_order()
    backbones = tuple(row_backbone_stage(cfg, row) for row in rows)
    # Each row's prompts are checked against its own alignment and the first row's, so that a row's heads start as
    # soon as its backbone is ready (the base row's beside the alignment) and every row still reads one prompt.
    plan = [PlannedStage(f"prompt_check_{row}", "prompt_check", tuple(dict.fromkeys((backbones[0], backbone,
            "record_vla"))), {"rows": list(dict.fromkeys((rows[0], row)))}) for row, backbone in zip(rows, backbones)]  # fmt: skip
    head = {"steps": s.head_steps, "batch": s.head_batch_size, "hidden": s.head_hidden_size, "layers": s.head_layers,
            "chunk": s.chunk_size, "n_action_steps": s.n_action_steps}  # fmt: skip
    evaluation = {"episodes": s.eval_episodes_per_task, "seed": cfg.eval_seed, "image": s.image_size}
    for row, backbone in zip(rows, backbones, strict=True):
        for seed in cfg.head_seeds:
            name = f"{row}_s{seed}"
            plan.append(PlannedStage(f"head_{name}", "head", (backbone, "record_vla", f"prompt_check_{row}"),
                                     {**head, "row": row, "seed": seed}, s.head_steps, (f"heads/{name}",)))  # fmt: skip
            plan.append(PlannedStage(f"eval_{name}", "eval", (f"head_{name}",), {**evaluation, "row": row},
                                     s.eval_episodes_per_task * len(TASKS), (f"evals/{name}",)))  # fmt: skip
    if cfg.base == "vqa":  # the base was taught scene questions: does it answer new ones, and does alignment keep it?
        plan.append(PlannedStage("vqa_heldout", "vqa_data", (), {"scenes": s.vqa_heldout_episodes, "image":
                                 s.image_size, "seeds": cfg.seeds("vqa_heldout")}, s.vqa_heldout_episodes, ("vqa_heldout",)))
        plan.append(PlannedStage("vqa_score", "vqa_score", ("backbone", *dict.fromkeys(backbones), "vqa_data",
                                 "vqa_heldout"), {"rows": rows}, s.vqa_heldout_episodes * (len(rows) + 1)))  # fmt: skip
    probe_frames = (
        len(TASKS) * (max(s.probe_demos) + s.probe_test_episodes_per_task) * s.probe_frames_per_episode
    )
    probe = {"demos": s.probe_demos, "frames_per_episode": s.probe_frames_per_episode, "rows": rows}
    plan.append(PlannedStage("probe_curve", "probe_curve", (*backbones, "record_probe"), probe,
                             probe_frames * len(rows)))  # fmt: skip
    return plan


def stage_plan(cfg: StudyConfig) -> list[PlannedStage]:
    """The stages the results need (evaluations, scores, probe; with ``--only``: that stage), each after its
    inputs; a stage nothing reads is left out (the base row alone on the random base records no alignment corpus)."""
    plan = alignment_stages(cfg) + head_stages(cfg)
    names = {stage.name for stage in plan}
    if cfg.only is not None and cfg.only not in names:
        raise ValueError(
            f"--only={cfg.only}: no such stage in this plan; choose one of {', '.join(sorted(names))}."
        )
    results = [cfg.only] if cfg.only else [s.name for s in plan if s.kind in RESULT_KINDS]
    return needed_for(plan, results)


def needed_for(plan: list[PlannedStage], targets: list[str]) -> list[PlannedStage]:
    """The ``targets`` and the stages they read, directly or not, in plan order."""
    by_name = {stage.name: stage for stage in plan}
    needed, pending = set(), list(targets)
    while pending:
        name = pending.pop()
        if name not in needed:
            needed.add(name)
            pending += by_name[name].after
    return [stage for stage in plan if stage.name in needed]


def cost_rates(output_dir: Path) -> dict[str, float]:
    """Seconds per unit per kind: a previous run's measurements where there are any, the demo's otherwise."""
    path = output_dir / COST_MODEL_FILE
    measured = json.loads(path.read_text()) if path.is_file() else {}
    return {**DEFAULT_RATES, **{kind: rate for kind, rate in measured.items() if kind in DEFAULT_RATES}}


def expected_seconds(stage: PlannedStage, rates: dict[str, float]) -> float:
    return OVERHEAD_S.get(stage.kind, 0.0) + stage.units * rates[stage.kind]


def calibrate(output_dir: Path, plan: list[PlannedStage], walls: dict[str, float]) -> dict[str, float]:
    """Seconds per unit per kind from the stages that ran, saved for the next run: wall time less the start-up
    overhead, over units, pooled per kind; only from stages whose units took longer than their start-up (a tiny
    run measures its start-ups, not its rates)."""
    totals: dict[str, list[float]] = {}
    for stage in plan:
        work = walls.get(stage.name, 0.0) - OVERHEAD_S.get(stage.kind, 0.0)
        if stage.units and work > OVERHEAD_S.get(stage.kind, 0.0):
            total = totals.setdefault(stage.kind, [0.0, 0.0])
            total[0] += work
            total[1] += stage.units
    rates = {**cost_rates(output_dir), **{kind: work / units for kind, (work, units) in totals.items()}}
    (output_dir / COST_MODEL_FILE).write_text(json.dumps(rates, indent=2))
    return rates


def estimate_lines(
    plan: list[PlannedStage], rates: dict[str, float], done: set[str], workers: int
) -> list[str]:
    """The expected time per stage, as printed at start (an estimate from the cost model, not a promise)."""
    lines = [
        "roboalign study: expected time per stage (an estimate: start-up + units x measured seconds per unit)"
    ]
    total = 0.0
    for stage in plan:
        seconds = 0.0 if stage.name in done else expected_seconds(stage, rates)
        total += seconds
        note = "done, reused" if stage.name in done else f"~{seconds / 60:.1f} min"
        lines.append(f"  {stage.name:<28} {note}")
    lines.append(f"  total ~{total / 60:.0f} min of stage time; about {total / 60 / max(1, workers):.0f}-"
                 f"{total / 60:.0f} min elapsed with {workers} stages at once")  # fmt: skip
    return lines


def plan_summary(plan: list[PlannedStage]) -> list[dict]:
    """The plan as JSON-able rows (the results file records what ran)."""
    return [asdict(stage) for stage in plan]
