"""`roboalign demo`'s order of stages: what runs beside what, what each depends on, and the report at the end."""

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from itertools import combinations
from pathlib import Path

from ..envs.variation import ALIGNMENT_SEED_BASE, ALIGNMENT_VARIATION, VLA_SEED_BASE
from ..runner import TINY_VLM_LAYER
from . import stages as stage
from .config import (
    ALIGN_STATE_NAMES,
    ALIGN_WITH_STATE,
    CORPUS_REPO_ID,
    CUBE_PROBE_SEED_OFFSET,
    FAST_SCALE,
    FREEZE_VISION,
    GRPO_LR,
    REPO_ID,
    SFT_LR,
    TASKS,
    VLA_LR,
    DemoConfig,
    DemoSizes,
    corpus_episodes,
    parse_config,
    recorded_episodes,
)
from .plots import plot_curves, plot_success, plot_success_curves, read_metrics
from .report import format_report
from .stages import AlignData, Stages, VlaHead

ROW_NAMES = {"base": "base backbone (unaligned)", "sft": "RoboAlign without RL (SFT)",
             "roboalign": "RoboAlign (SFT + GRPO)"}  # fmt: skip


def limit_threads(threads: int) -> None:
    """Set the thread count here and, through the environment, in every subprocess the stages start."""
    if threads > 0:
        import torch

        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


def eval_settings(cfg: DemoConfig) -> dict:
    """What an evaluation's outcome depends on (the VLA rows' and the expert's)."""
    return {"episodes": cfg.sizes.eval_episodes_per_task, "seed": cfg.eval_seed, "image": cfg.sizes.image_size}


def checkpoint_steps(sizes: DemoSizes) -> list[int]:
    """The training steps whose checkpoints are evaluated: the last, and with ``eval_every_checkpoint`` every one
    lerobot-train saves (every ``vla_save_every``)."""
    every = min(sizes.vla_save_every, sizes.vla_steps) if sizes.eval_every_checkpoint else sizes.vla_steps
    return sorted({*range(every, sizes.vla_steps, every), sizes.vla_steps}, reverse=True)  # the row's result first


def align_data(cfg: DemoConfig, root: str = "alignment_corpus", repo_id: str = CORPUS_REPO_ID) -> AlignData:
    """A recording as alignment reads it: the corpus for alignment, the VLA demonstrations for the action probe."""
    sizes = cfg.sizes
    return AlignData(cfg.output_dir / root, repo_id, sizes.chunk_size, sizes.holdout_every, cfg.seed,
                     ALIGN_WITH_STATE, ALIGN_STATE_NAMES)  # fmt: skip


def record(cfg: DemoConfig, stages: Stages) -> None:
    """The VLA demonstrations (target scene, seeds from 10^7), then the alignment corpus (varied scenes, seeds from
    3x10^7: never one of the VLA's episodes)."""
    out, sizes = cfg.output_dir, cfg.sizes
    common = {"image": sizes.image_size, "seed": cfg.seed, "frames": "lossless H.264"}
    stages.run("record", lambda: stage.record_demos(out / "dataset", recorded_episodes(sizes), cfg.seed,
                                                    sizes.image_size, cfg.parallel_stages),
               {**common, "episodes": recorded_episodes(sizes), "seed_base": VLA_SEED_BASE},
               outputs=(out / "dataset", out / "dataset.recording", out / "dataset.merging"))  # fmt: skip
    corpus = out / "alignment_corpus"
    stages.run("record_corpus", lambda: stage.record_demos(corpus, corpus_episodes(sizes), cfg.seed, sizes.image_size,
                                                           cfg.parallel_stages, CORPUS_REPO_ID,
                                                           variation=ALIGNMENT_VARIATION),
               {**common, "episodes": corpus_episodes(sizes), "seed_base": ALIGNMENT_SEED_BASE,
                "variation": asdict(ALIGNMENT_VARIATION)},
               outputs=(corpus, corpus.with_name(corpus.name + ".recording"),
                        corpus.with_name(corpus.name + ".merging")))  # fmt: skip


def vla_head(sizes: DemoSizes) -> VlaHead:
    return VlaHead(sizes.vla_steps, sizes.vla_batch_size, sizes.chunk_size, sizes.n_action_steps,
                   sizes.vla_head_hidden_size, sizes.vla_head_layers, sizes.vla_save_every, VLA_LR)  # fmt: skip


def eval_vla(cfg: DemoConfig, name: str, checkpoint: str, camera_off: bool = False) -> dict:
    sizes = cfg.sizes
    return stage.eval_vla(checkpoint, cfg.output_dir / f"eval_{name}", sizes.eval_episodes_per_task, cfg.eval_seed,
                          sizes.image_size, TASKS, camera_off, label=f"lerobot-eval {name}")  # fmt: skip


def vla_row(cfg: DemoConfig, stages: Stages, key: str, path: str, source: str) -> tuple[dict, dict[int, dict], dict]:
    """Train one VLA on ``path`` with lerobot-train, then evaluate each of its checkpoints with lerobot-eval on the
    same seeds, and the last one again with the camera off: (train result, eval counts per training step, the last
    step being the row's result; eval counts with the camera off)."""
    sizes, out, head = cfg.sizes, cfg.output_dir, vla_head(cfg.sizes)
    keys = ("vla_steps", "vla_batch_size", "chunk_size", "n_action_steps", "vla_head_hidden_size", "vla_head_layers")
    settings = {k: getattr(sizes, k) for k in keys}
    output = out / f"vla_{key}"
    vla = stages.run(f"vla_{key}", lambda: stage.train_vla(out / "dataset", path, output, head, cfg.seed, REPO_ID,
                                                          f"lerobot-train {key}"),
                     {**settings, "lr": VLA_LR}, ("record", source), outputs=(output,))  # fmt: skip
    curve = {}
    for step in checkpoint_steps(sizes):
        name = key if step == sizes.vla_steps else f"{key}_{step}"
        checkpoint = stage.vla_checkpoint(output, head, step)
        curve[step] = stages.run(f"eval_{name}", lambda n=name, c=checkpoint: eval_vla(cfg, n, str(c)),
                                 eval_settings(cfg), (f"vla_{key}",))  # fmt: skip
    final = str(stage.vla_checkpoint(output, head, sizes.vla_steps))
    camera_off = stages.run(f"eval_{key}_camera_off", lambda: eval_vla(cfg, f"{key}_camera_off", final, True),
                            {**eval_settings(cfg), "camera_off": True}, (f"vla_{key}",))  # fmt: skip
    return vla, curve, camera_off


def run(cfg: DemoConfig) -> Path:
    start = time.perf_counter()
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    limit_threads(cfg.cpu_threads)
    out, sizes, data = cfg.output_dir, cfg.sizes, align_data(cfg)
    stages = Stages(out, cfg.parallel_stages)
    record(cfg, stages)
    backbone = stages.run("backbone", lambda: stage.make_backbone(out / "backbone", cfg.seed), {"seed": cfg.seed},
                          outputs=(out / "backbone",))["path"]  # fmt: skip
    names = ROW_NAMES
    # The VLA rows run beside the alignment (their own processes, one CPU thread each): the base row needs only the
    # recording and the base backbone, so it trains while SFT runs; the SFT row trains while GRPO runs.
    with ThreadPoolExecutor(max_workers=max(1, cfg.parallel_stages)) as pool:
        rows = {"base": pool.submit(vla_row, cfg, stages, "base", backbone, "backbone")}
        fast = stages.run("tokenizer", lambda: stage.fit_tokenizer(data, out / "fast_tokenizer"),
                          {"chunk": sizes.chunk_size, "scale": FAST_SCALE}, ("record_corpus",),
                          outputs=(out / "fast_tokenizer",))["path"]  # fmt: skip
        reasoning = stages.run("reason", lambda: stage.write_reasoning(data, out / "reasoning.jsonl"),
                               {"source": "scripted"}, ("record_corpus",), outputs=(out / "reasoning.jsonl",))["path"]  # fmt: skip
        align_inputs = ("record_corpus", "backbone", "tokenizer", "reason")
        sft_settings = {"steps": sizes.sft_steps, "lr": SFT_LR, "holdout": sizes.holdout_every, "seed": cfg.seed,
                        "state": ALIGN_WITH_STATE, "state_names": ALIGN_STATE_NAMES,
                        "freeze_vision": FREEZE_VISION}  # fmt: skip
        sft = stages.run("sft", lambda: stage.align_sft(data, backbone, fast, reasoning, out / "align_sft",
                                                        sizes.sft_steps, cfg.seed),
                         sft_settings, align_inputs, outputs=(out / "align_sft",))  # fmt: skip
        rows["sft"] = pool.submit(vla_row, cfg, stages, "sft", sft["path"], "sft")  # beside GRPO
        grpo_settings = {"steps": sizes.grpo_steps, "lr": GRPO_LR, "samples": sizes.grpo_samples,
                         "g": sizes.grpo_generations}  # fmt: skip
        grpo = stages.run("grpo", lambda: stage.align_grpo(data, sft["path"], reasoning, out / "align_grpo",
                                                           sizes.grpo_steps, sizes.grpo_samples,
                                                           sizes.grpo_generations, cfg.seed),
                          grpo_settings, ("sft",), outputs=(out / "align_grpo",))  # fmt: skip
        rows["roboalign"] = pool.submit(vla_row, cfg, stages, "roboalign", grpo["path"], "grpo")
        aligned = {names["sft"]: sft["path"], names["roboalign"]: grpo["path"]}
        rows["sft"].result()  # the analysis below then takes the core the SFT row leaves, not the GRPO row's
        expert = stages.run("expert", lambda: stage.eval_expert(sizes.eval_episodes_per_task, cfg.eval_seed),
                            eval_settings(cfg))  # fmt: skip
        scores = stages.run("score", lambda: stage.score_alignment(data, aligned, fast, reasoning, sizes.score_samples),
                            {"frames": sizes.score_samples, "l1_on_decoded_frames": True}, ("grpo",))  # fmt: skip
        all_backbones = {names["base"]: backbone, **aligned}
        demos = align_data(cfg, "dataset", REPO_ID)  # what the head reads
        probe = stages.run("probe", lambda: stage.probe_actions(demos, all_backbones, sizes.probe_frames,
                                                                sizes.image_size),
                           {"holdout": sizes.holdout_every, "layer": TINY_VLM_LAYER, "frames": sizes.probe_frames},
                           ("record", "grpo"))  # fmt: skip
        train_sizes = tuple(sorted({min(sizes.reach_episodes, sizes.cube_probe_frames), sizes.cube_probe_frames}))
        cube_seed = cfg.eval_seed + CUBE_PROBE_SEED_OFFSET
        cube_settings = {"layer": TINY_VLM_LAYER, "frames": sizes.cube_probe_frames, "test": sizes.cube_probe_test,
                         "episodes": recorded_episodes(sizes), "image": sizes.image_size, "seed": cfg.eval_seed}  # fmt: skip
        probe["cube"] = stages.run("cube_probe", lambda: stage.probe_cube(all_backbones, sizes.image_size, train_sizes,
                                                                          sizes.cube_probe_test, cube_seed),
                                   cube_settings, ("grpo",))  # fmt: skip
        results = {key: future.result() for key, future in rows.items()}
    curves = {f"VLA on {names[key]}": curve for key, (_, curve, _) in results.items()}
    evals = {name: curve[sizes.vla_steps] for name, curve in curves.items()}
    camera_off = {f"VLA on {names[key]}": counts for key, (_, _, counts) in results.items()}
    losses = {names[key]: vla["loss"] for key, (vla, _, _) in results.items()}
    pairs = list(combinations(evals, 2))  # base-SFT, base-GRPO, SFT-GRPO, in the rows' order
    evals["scripted expert (reference)"] = expert
    report = format_report(cfg, evals, scores, stages.wall_times(), pairs, time.perf_counter() - start, curves, probe,
                           camera_off)  # fmt: skip
    plots = [plot_success(out, evals), plot_success_curves(out, curves),
             plot_curves(out, read_metrics(Path(sft["metrics"])), read_metrics(Path(grpo["metrics"])), losses,
                         sizes.vla_steps)]  # fmt: skip
    report += "\n" + "\n".join(f"![{p}]({p})" for p in plots) + "\n"
    (out / "report.md").write_text(report)
    print(report)
    return out / "report.md"


def main(argv: list[str] | None = None) -> Path:
    logging.basicConfig(level=logging.INFO)
    return run(parse_config(list(argv or [])))
