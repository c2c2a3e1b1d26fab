"""What each of the study's stages does: ``work(cfg, stage, inputs) -> dict``, on the demo's stage functions.

Recording, tokenizer, reasoning, SFT, GRPO, scoring, heads and evaluation are the demo's own functions
(``lerobot_roboalign.demo.stages``), called with the study's data and settings; nothing is copied here. The
study adds its corpora (a varied alignment recording, scene questions), the matched-SFT control, the prompt check
and the probe curve.
"""

from pathlib import Path

from .config import TASKS, StudyConfig
from .plan import PlannedStage, row_backbone_stage

ALIGNMENT_REPO = "local/so101_alignment"
TARGET_REPO = "local/so101_target"
PROBE_REPO = "local/so101_probe"
TARGET_HOLDOUT = 2  # the VLA demonstrations' odd episodes: the target-task frames alignment is scored on


def limit_threads(threads: int) -> None:
    from ..demo.pipeline import limit_threads as limit

    limit(threads)


def alignment_data(cfg: StudyConfig):
    """The alignment corpus as SFT, GRPO and scoring read it (the prompt's state text per ``--state_text``)."""
    from ..demo.stages import AlignData

    s = cfg.sizes
    return AlignData(cfg.output_dir / "alignment_dataset", ALIGNMENT_REPO, s.chunk_size, s.holdout_every, cfg.seed,
                     include_state=cfg.state_text)  # fmt: skip


def target_data(cfg: StudyConfig):
    """The VLA demonstrations read as alignment data: the target-task frames alignment is scored on."""
    from ..demo.stages import AlignData

    return AlignData(cfg.output_dir / "vla_dataset", TARGET_REPO, cfg.sizes.chunk_size, TARGET_HOLDOUT, cfg.seed,
                     include_state=cfg.state_text)  # fmt: skip


def image_args(cfg: StudyConfig) -> tuple[str, ...]:
    """Alignment shows the MLLM the VLA's image size (recorded in the model's roboalign_format.json)."""
    return (f"--dataset.image_size={cfg.sizes.image_size}",)


def record(cfg: StudyConfig, stage: PlannedStage, inputs: dict) -> dict:
    """Target-task demonstrations (the VLA's, or the probe's), canonical scene and instruction."""
    from ..demo.stages import record_demos

    seed_base, seed = stage.settings["seeds"]
    repo = TARGET_REPO if stage.name == "record_vla" else PROBE_REPO
    episodes = dict.fromkeys(TASKS, stage.settings["episodes"])
    root = cfg.output_dir / stage.outputs[0]
    summary = record_demos(
        root, episodes, seed, stage.settings["image"], cfg.workers, repo, seed_base=seed_base
    )
    return {"root": str(root), "repo_id": repo, "summary": summary}


def record_alignment(cfg: StudyConfig, stage: PlannedStage, inputs: dict) -> dict:
    """The varied alignment corpus: every factor of envs/variation.py's ALIGNMENT_VARIATION, both tasks."""
    from ..demo.stages import record_demos
    from ..envs.variation import ALIGNMENT_VARIATION

    seed_base, seed = stage.settings["seeds"]
    episodes = dict.fromkeys(TASKS, stage.settings["episodes"])
    root = cfg.output_dir / stage.outputs[0]
    summary = record_demos(root, episodes, seed, stage.settings["image"], cfg.workers, ALIGNMENT_REPO,
                           seed_base=seed_base, variation=ALIGNMENT_VARIATION)  # fmt: skip
    return {"root": str(root), "repo_id": ALIGNMENT_REPO, "summary": summary}


def backbone(cfg: StudyConfig, stage: PlannedStage, inputs: dict) -> dict:
    from ..demo.stages import make_backbone

    return make_backbone(cfg.output_dir / "backbone", cfg.seed)


def tokenizer(cfg: StudyConfig, stage: PlannedStage, inputs: dict) -> dict:
    from ..demo.stages import fit_tokenizer

    return fit_tokenizer(alignment_data(cfg), cfg.output_dir / "fast_tokenizer")


def reason(cfg: StudyConfig, stage: PlannedStage, inputs: dict) -> dict:
    from ..demo.stages import write_reasoning

    return write_reasoning(alignment_data(cfg), cfg.output_dir / "reasoning.jsonl")


def sft(cfg: StudyConfig, stage: PlannedStage, inputs: dict) -> dict:
    """Alignment SFT of the base on the corpus's training episodes, co-trained on the scene questions."""
    from ..demo.stages import align_sft

    s = cfg.sizes
    base = inputs[row_backbone_stage(cfg, "base")]["path"]
    vqa = (
        (f"--vqa.path={inputs['vqa_data']['path']}", f"--vqa.ratio={s.vqa_ratio}") if s.vqa_ratio > 0 else ()
    )
    return align_sft(alignment_data(cfg), base, inputs["tokenizer"]["path"], inputs["reason"]["path"],
                     cfg.output_dir / "align_sft", s.sft_steps, cfg.seed, batch_size=s.sft_batch_size,
                     extra_args=(*image_args(cfg), *vqa))  # fmt: skip


def grpo(cfg: StudyConfig, stage: PlannedStage, inputs: dict) -> dict:
    from ..demo.stages import align_grpo

    settings = stage.settings
    return align_grpo(alignment_data(cfg), inputs["sft"]["path"], inputs["reason"]["path"],
                      cfg.output_dir / "align_grpo", settings["steps"], settings["samples"], settings["generations"],
                      cfg.seed, extra_args=image_args(cfg))  # fmt: skip


def matched_sft(cfg: StudyConfig, stage: PlannedStage, inputs: dict) -> dict:
    """The paper's control: SFT continued on exactly GRPO's prompts with their demonstrated targets, as many
    samples as GRPO's completions. GRPO draws its prompts once, ``load_samples`` with its ``--dataset.*`` flags
    (split, seed, ``num_samples``): the same flags here draw the same frames. Batch = GRPO's (2 prompts x
    generations) and steps = GRPO's, so SFT sees steps x batch samples, GRPO's count of completions."""
    from ..demo.stages import align_sft

    settings = stage.settings
    batch = settings["generations"] * 2  # align_grpo's per-step completions
    data, paths = alignment_data(cfg), (inputs["sft"]["path"], inputs["tokenizer"]["path"], inputs["reason"]["path"])
    result = align_sft(data, *paths, cfg.output_dir / "align_matched_sft", settings["steps"], cfg.seed,
                       batch_size=batch, extra_args=(*image_args(cfg), f"--dataset.num_samples={settings['samples']}"))  # fmt: skip
    return {**result, "prompts": drawn_prompts(cfg, settings["samples"])}


def drawn_prompts(cfg: StudyConfig, samples: int) -> list[str]:
    """The ids of the training frames GRPO and the matched SFT draw (recorded, so the match can be checked)."""
    from ..align.data import load_samples

    drawn = load_samples(alignment_data(cfg).config(split="train", num_samples=samples))
    return [drawn.value(i, "id") for i in range(len(drawn))]


def aligned_backbones(cfg: StudyConfig, inputs: dict) -> dict[str, str]:
    """The aligned models scored, SFT first (GRPO minus SFT is "after minus before")."""
    names = {"sft": "SFT", "grpo": "SFT + GRPO", "matched_sft": "matched SFT"}
    return {label: inputs[name]["path"] for name, label in names.items() if name in inputs}


def score(cfg: StudyConfig, stage: PlannedStage, inputs: dict) -> dict:
    """Alignment before/after GRPO (and the matched SFT) on held-out alignment frames and on target-task frames,
    each against the task-aware blind baselines (the demo's scoring)."""
    from ..demo.stages import score_alignment, write_reasoning

    frames = stage.settings["frames"]
    fast, backbones = inputs["tokenizer"]["path"], aligned_backbones(cfg, inputs)
    target = target_data(cfg)
    target_reasoning = write_reasoning(target, cfg.output_dir / "reasoning_target.jsonl")["path"]
    return {
        "alignment": score_alignment(alignment_data(cfg), backbones, fast, inputs["reason"]["path"], frames),
        "target": score_alignment(target, backbones, fast, target_reasoning, frames),
    }


def prompt_check(cfg: StudyConfig, stage: PlannedStage, inputs: dict) -> dict:
    """Refuse to train heads unless every row's VLA sees its backbone's alignment prompt and image size."""
    from .prompts import check_prompts, dataset_inputs

    paths = {row: inputs[row_backbone_stage(cfg, row)]["path"] for row in stage.settings["rows"]}
    return check_prompts(paths, *dataset_inputs(Path(inputs["record_vla"]["root"])), cfg.sizes.image_size)


def feature_cache_args(cfg: StudyConfig) -> tuple[str, ...]:
    """A frozen backbone's features computed once per frame, shared by a row's head seeds (one cache directory:
    the cache keys by backbone and dataset; re-recording the VLA demonstrations deletes it, see plan.py)."""
    return ("--policy.cache_features=true", f"--policy.feature_cache_dir={cfg.output_dir / 'feature_cache'}")


def head(cfg: StudyConfig, stage: PlannedStage, inputs: dict) -> dict:
    """A fresh flow-matching head on the row's frozen backbone (lerobot-train, features cached)."""
    from ..demo.stages import VlaHead, train_vla

    s, settings = cfg.sizes, stage.settings
    spec = VlaHead(s.head_steps, s.head_batch_size, s.chunk_size, s.n_action_steps, s.head_hidden_size,
                   s.head_layers, save_every=s.head_steps, extra_args=feature_cache_args(cfg))  # fmt: skip
    backbone_path = inputs[row_backbone_stage(cfg, settings["row"])]["path"]
    return train_vla(Path(inputs["record_vla"]["root"]), backbone_path, cfg.output_dir / stage.outputs[0], spec,
                     settings["seed"], TARGET_REPO, label=stage.name)  # fmt: skip


def evaluate(cfg: StudyConfig, stage: PlannedStage, inputs: dict) -> dict:
    """lerobot-eval of one head on the study's seeds: per task, each episode's success keyed by its seed."""
    from ..demo.stages import by_seed, eval_vla

    checkpoint = inputs[stage.after[0]]["checkpoint"]
    counts = eval_vla(checkpoint, cfg.output_dir / stage.outputs[0], stage.settings["episodes"], cfg.eval_seed,
                      cfg.sizes.image_size, label=stage.name)  # fmt: skip
    return {task: {str(seed): success for seed, success in by_seed(counts[task]).items()} for task in TASKS}


def probe_curve(cfg: StudyConfig, stage: PlannedStage, inputs: dict) -> dict:
    from .probe_curve import probe_curve as curve

    paths = {row: inputs[row_backbone_stage(cfg, row)]["path"] for row in stage.settings["rows"]}
    root = Path(inputs["record_probe"]["root"])
    return curve(paths, root, PROBE_REPO, cfg.sizes)


def vqa_data(cfg: StudyConfig, stage: PlannedStage, inputs: dict) -> dict:
    """Scene questions about varied simulated frames, answered from the simulator's state (`sim vqa`)."""
    from ..scene_vqa import VQA_FILE, SceneVQAConfig, write_scene_vqa

    seed_base, seed = stage.settings["seeds"]
    root, size = cfg.output_dir / stage.outputs[0], stage.settings["image"]
    summary = write_scene_vqa(SceneVQAConfig(root=root, episodes=stage.settings["scenes"], seed=seed,
                                             seed_base=seed_base, image_height=size, image_width=size))  # fmt: skip
    return {"path": str(root / VQA_FILE), "records": summary["records"], "classes": summary["classes"]}


def vqa_base(cfg: StudyConfig, stage: PlannedStage, inputs: dict) -> dict:
    """The stand-in for a general MLLM: the random backbone trained on the scene questions alone (no actions);
    it gets the alignment's action vocabulary, untrained, so that SFT continues from it."""
    from ..demo.stages import roboalign, training_args

    s, output = cfg.sizes, cfg.output_dir / stage.outputs[0]
    roboalign([
        "align", "sft", "--vqa.only=true",
        f"--vqa.path={inputs['vqa_data']['path']}",
        f"--model.path={inputs['backbone']['path']}",
        f"--model.fast_tokenizer={inputs['tokenizer']['path']}",
        *image_args(cfg),
        *training_args(output, stage.settings["steps"], s.sft_batch_size, cfg.seed),
        *stage.settings["args"],
    ])  # fmt: skip
    return {"path": str(output / "model"), "metrics": str(output / "metrics.csv")}


def vqa_score(cfg: StudyConfig, stage: PlannedStage, inputs: dict) -> dict:
    """Accuracy on held-out scene questions of the random backbone and of each row's, beside the image-blind
    majority answer per question type: whether the base reads the scene at all, and whether alignment kept it."""
    from ..scene_vqa import answers_correct, majority_correct, read_records

    train = read_records(Path(inputs["vqa_data"]["path"]).parent)
    root = Path(inputs["vqa_heldout"]["path"]).parent
    test = read_records(root)
    models = {"random backbone": inputs["backbone"]["path"]}
    models |= {row: inputs[row_backbone_stage(cfg, row)]["path"] for row in stage.settings["rows"]}
    correct = {name: answers_correct(path, test, root) for name, path in models.items()}
    correct["blind majority"] = majority_correct(train, test)
    return {"types": [item["type"] for item in test], "correct": correct}


WORKS = {
    "record": record,
    "record_alignment": record_alignment,
    "vqa_data": vqa_data,
    "backbone": backbone,
    "vqa_base": vqa_base,
    "vqa_score": vqa_score,
    "tokenizer": tokenizer,
    "reason": reason,
    "sft": sft,
    "grpo": grpo,
    "matched_sft": matched_sft,
    "score": score,
    "prompt_check": prompt_check,
    "head": head,
    "eval": evaluate,
    "probe_curve": probe_curve,
}
