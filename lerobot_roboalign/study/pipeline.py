"""Run the study's plan stage by stage, resumable, with the demo's ``Stages``.

Every stage runs on a thread of its own once its inputs are done; ``Stages`` lets at most ``--workers`` of them
work at once, reuses a finished stage with the same settings and resumes an interrupted one. The work of each
kind of stage is a function ``work(cfg, stage, inputs) -> dict`` (``inputs``: the results of the stages it
comes after), injected so that the orchestration can be tested with cheap stand-ins.
"""

import json
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path

from .config import StudyConfig
from .plan import PlannedStage, calibrate, cost_rates, estimate_lines, stage_plan

Work = Callable[[StudyConfig, PlannedStage, dict[str, dict]], dict]
# Stages that train in this process (TRL, transformers' Trainer, accelerate): their state is process-wide, so two at
# once in two threads break each other (GRPO died beside the matched SFT). They take turns; heads and evaluations
# are lerobot-train/lerobot-eval processes and run beside them.
IN_PROCESS_TRAINING = frozenset({"vqa_base", "sft", "grpo", "matched_sft"})


def fingerprints(plan: list[PlannedStage]) -> dict[str, str]:
    """Each stage's fingerprint as ``Stages.run`` computes it (settings and the inputs' fingerprints)."""
    from ..demo.stages import fingerprint

    keys: dict[str, str] = {}
    for stage in plan:
        keys[stage.name] = fingerprint(stage.name, stage.settings, [keys[name] for name in stage.after])
    return keys


def finished(output_dir: Path, plan: list[PlannedStage]) -> set[str]:
    """Stages already complete with the planned settings (reused, not rerun)."""
    done = set()
    for name, key in fingerprints(plan).items():
        marker = output_dir / "stages" / f"{name}.json"
        if marker.is_file() and json.loads(marker.read_text()).get("fingerprint") == key:
            done.add(name)
    return done


def run_plan(
    cfg: StudyConfig, plan: list[PlannedStage], works: Mapping[str, Work]
) -> tuple[dict[str, dict], object]:
    """Every stage's result (each once its inputs are done), and the ``Stages`` that ran them."""
    from ..demo.stages import Stages

    missing = sorted({stage.kind for stage in plan} - set(works))
    if missing:
        raise ValueError(f"no work function for stage kinds {missing}")
    stages = Stages(cfg.output_dir, cfg.workers, label="roboalign study")
    futures: dict[str, Future] = {}

    trainer = threading.Lock()

    def one(stage: PlannedStage) -> dict:
        inputs = {name: futures[name].result() for name in stage.after}  # raises if an input failed
        outputs = tuple(cfg.output_dir / path for path in stage.outputs)
        with trainer if stage.kind in IN_PROCESS_TRAINING else nullcontext():
            return stages.run(stage.name, lambda: works[stage.kind](cfg, stage, inputs), stage.settings, stage.after,
                              outputs)  # fmt: skip

    # One thread per stage, submitted in plan order: a stage waits only on stages submitted before it.
    with ThreadPoolExecutor(max_workers=len(plan)) as pool:
        for stage in plan:
            futures[stage.name] = pool.submit(one, stage)
    return {name: future.result() for name, future in futures.items()}, stages


def run(cfg: StudyConfig, works: Mapping[str, Work] | None = None, report: Callable | None = None) -> Path:
    """The whole study: the plan's stages, then the report (always rewritten: it is cheap)."""
    start = time.perf_counter()
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    plan = stage_plan(cfg)
    print("\n".join(estimate_lines(plan, cost_rates(cfg.output_dir), finished(cfg.output_dir, plan), cfg.workers)),
          flush=True)  # fmt: skip
    if works is None:
        from .stages import WORKS, limit_threads

        limit_threads(cfg.cpu_threads)
        works = WORKS
    results, stages = run_plan(cfg, plan, works)
    walls = stages.wall_times()
    calibrate(cfg.output_dir, plan, walls)
    if cfg.only is not None:  # a pilot's partial run: its result is the stage's record
        print(json.dumps(results[cfg.only], indent=2, default=str)[:4000], flush=True)
        return cfg.output_dir / "stages" / f"{cfg.only}.json"
    if report is None:
        from .report import write_report as report
    return report(cfg, plan, results, walls, time.perf_counter() - start)
