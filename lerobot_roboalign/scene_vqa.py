"""``roboalign sim vqa``: scene questions about simulated SO-101 frames, answered from the simulator's state.

The transfer study's "VQA base" (docs/study.md) stands in for a general MLLM: the tiny backbone first trained on
generic questions about the scene (where is the cube, is the gripper open, which colour, how many blocks), with no
action data; the alignment SFT then co-trains the same questions (``--vqa.ratio``). Scenes are varied
(envs/variation.py) and come from their own seed range (5 x 10^7 up); each frame is taken after a random number of
scripted-expert steps, so the gripper is seen open and closed. Answers are read from the simulator, never from
the image; a question whose true answer is near a class boundary is not asked. Every question type has balanced
answers (each class subsampled to the rarest one's count), so answering blind scores the chance rate.

Writes ``<root>/vqa.json`` (LLaVA's list of ``{"id", "image", "conversations"}``, read by
``align sft --vqa.path``), ``<root>/images/*.png`` and ``<root>/summary.json``; each record also holds its
question ``type`` and answer ``options``, which ``answer_accuracy`` scores by likelihood ranking.

    roboalign sim vqa --root=outputs/so101_vqa --episodes=400

Import-light at module level (stdlib and draccus), so ``--help`` is fast; MuJoCo and torch load when used.
"""

import json
import math
import os
import random
import shutil
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import draccus

from lerobot_roboalign.envs.variation import (
    ALIGNMENT_SEED_BASE,
    CUBE_COLOURS,
    SEED_BLOCK,
    VLA_SEED_BASE,
    VQA_SEED_BASE,
    AlignmentVariation,
    check_disjoint_seed_ranges,
    check_seed_range,
    seed_range,
)
from lerobot_roboalign.sim_cli import TASK_NAMES

VQA_FILE = "vqa.json"
SUMMARY_FILE = "summary.json"
IMAGE_DIR = "images"
# The camera looks at the robot from the front: the robot's left (+y) is the picture's right.
SIDE_MARGIN_M = 0.02  # |y| below this: the cube is too near the picture's centre line to ask left or right
NEAR_FAR_SPLIT_M = 0.27  # x of the line between "near the camera" and "far from it" (mid sampling boxes)
NEAR_FAR_MARGIN_M = 0.02
BLOCK_MARGIN_M = 0.03  # a block's half diagonal, about: its centre this far inside the picture's edge
OPEN_ABOVE, CLOSED_BELOW = 0.6, 0.3  # the jaw's opening (fraction of its joint range) that counts as open / closed
COUNT_WORDS = ("one", "two", "three")
QUESTIONS = {
    "side": ("Is the {colour} cube on the left or on the right of the picture?", ("left", "right")),
    "distance": ("Is the {colour} cube near the camera or far from it?", ("near", "far")),
    "gripper": ("Is the gripper open or closed?", ("open", "closed")),
    "colour": ("What colour is the block?", tuple(CUBE_COLOURS)),
    "present": ("Is there a {other} block in the picture?", ("yes", "no")),
    "count": ("How many blocks are in the picture?", COUNT_WORDS),
}


@dataclass
class SceneVQAConfig:
    """``roboalign sim vqa``: where to write, how many scenes, which seeds and how varied."""

    root: Path = Path("outputs/so101_vqa")
    episodes: int = 400  # scenes (each frame gets up to 5 questions, then classes are balanced)
    seed: int = 0  # scenes from seed_base + seed x 10^6 up
    seed_base: int = VQA_SEED_BASE  # never the alignment corpus's or the VLA demonstrations' seeds
    image_height: int = 96
    image_width: int = 96
    variation: AlignmentVariation = field(default_factory=AlignmentVariation)


def check_seeds(seeds: range) -> None:
    """The questions' scenes share no seed with the alignment corpus or the VLA demonstrations."""
    check_seed_range(seeds, varied=True)
    check_disjoint_seed_ranges({
        "the scene questions": seeds,
        "the alignment corpus": range(ALIGNMENT_SEED_BASE, ALIGNMENT_SEED_BASE + SEED_BLOCK),
        "the VLA demonstrations": range(VLA_SEED_BASE, VLA_SEED_BASE + SEED_BLOCK),
    })  # fmt: skip


def in_view(env, point) -> bool:
    """Whether a block centred at ``point`` lies wholly inside the front camera's picture (pinhole projection).

    Not every block does: reach_and_close samples the cube up to x = 0.4 m, and from about 0.36 m the picture's
    lower edge cuts it off (at 96x96, 3% of its episodes start with no cube pixel at all).
    """
    model, data = env.sim.model, env.sim.data
    camera = model.camera("front").id
    local = data.cam_xmat[camera].reshape(3, 3).T @ (point - data.cam_xpos[camera])  # the camera looks along -z
    depth = -local[2]
    half_height = depth * math.tan(math.radians(model.cam_fovy[camera]) / 2)
    height, width = env.image_hw
    fits = abs(local[0]) + BLOCK_MARGIN_M < half_height * width / height and abs(local[1]) + BLOCK_MARGIN_M < half_height
    return bool(depth > 0 and fits)


def scene_facts(env) -> dict:
    """What the questions ask, read from the simulator: the cube, the jaw, the blocks and whether all are in view."""
    sim = env.sim
    joint = sim.model.joint("gripper")
    low, high = sim.model.jnt_range[joint.id]
    opening = (float(sim.data.qpos[joint.qposadr[0]]) - low) / (high - low)
    x, y, _ = env.block_pos
    blocks = [env.block_pos, *(xyz for _, xyz in env.distractors)]
    return {"colour": env.scene.colour, "others": list(env.scene.distractor_colours), "x": float(x), "y": float(y),
            "opening": float(opening), "in_view": all(in_view(env, xyz) for xyz in blocks)}  # fmt: skip


def questions(facts: dict, rng: random.Random) -> list[tuple[str, str, str]]:
    """(type, question, answer) of a frame, each only where its answer is unambiguous (a block out of the picture:
    only the gripper's)."""
    colour, others = facts["colour"], facts["others"]
    asked = []
    if facts["opening"] > OPEN_ABOVE or facts["opening"] < CLOSED_BELOW:
        asked.append(("gripper", "open" if facts["opening"] > OPEN_ABOVE else "closed"))
    if not facts["in_view"]:
        return [(kind, QUESTIONS[kind][0], answer) for kind, answer in asked]
    if abs(facts["y"]) >= SIDE_MARGIN_M:
        asked.append(("side", "right" if facts["y"] > 0 else "left"))
    if abs(facts["x"] - NEAR_FAR_SPLIT_M) >= NEAR_FAR_MARGIN_M:
        asked.append(("distance", "near" if facts["x"] > NEAR_FAR_SPLIT_M else "far"))
    if not others:
        asked.append(("colour", colour))
    shown = [colour, *others]
    other = rng.choice(sorted(CUBE_COLOURS))
    asked.append(("present", "yes" if other in shown else "no"))
    asked.append(("count", COUNT_WORDS[len(shown) - 1]))
    return [(kind, QUESTIONS[kind][0].format(colour=colour, other=other), answer) for kind, answer in asked]


def record(image: str, index: int, kind: str, question: str, answer: str) -> dict:
    return {"id": f"scene-{index}", "image": image, "type": kind, "options": list(QUESTIONS[kind][1]),
            "conversations": [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}]}  # fmt: skip


def balanced(candidates: list[dict], rng: random.Random) -> list[dict]:
    """Per question type, every answer class cut to the rarest class's count (types with one class dropped)."""
    by_class: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for item in candidates:
        by_class[item["type"], item["conversations"][-1]["value"]].append(item)
    kept = []
    for kind, (_, options) in QUESTIONS.items():
        groups = [by_class[kind, option] for option in options]
        count = min(len(group) for group in groups)
        kept += [item for group in groups for item in rng.sample(group, count)]
    rng.shuffle(kept)
    return kept


def frame_at_random_step(env, expert, seed: int, rng: random.Random):
    """The frame after a random number of expert steps, up to half the task's budget (about the expert's episode:
    the jaw is seen open and closed, the cube on the table and carried)."""
    from lerobot_roboalign.envs.so101_lang import TASKS

    env.reset(seed=seed)
    expert.reset()
    for _ in range(rng.randrange(TASKS[env.task].max_steps // 2 + 1)):
        _, _, terminated, _, _ = env.step(expert.act())
        if terminated:
            break
    return env.render()  # the only frame drawn: the env steps without images


def write_scene_vqa(cfg: SceneVQAConfig) -> dict:
    """Ask and answer the questions of ``cfg.episodes`` scenes; returns the summary (also ``summary.json``)."""
    from PIL import Image

    from lerobot_roboalign.envs.so101_lang import ScriptedExpert, SO101LangEnv

    if cfg.episodes < 1:
        raise ValueError(f"--episodes={cfg.episodes} must be >= 1.")
    seeds = seed_range(cfg.seed_base, cfg.seed)
    check_seeds(seeds)
    settings = {**asdict(cfg), "root": str(cfg.root)}
    if (cfg.root / SUMMARY_FILE).exists():
        summary = json.loads((cfg.root / SUMMARY_FILE).read_text())
        if summary["settings"] != settings:
            raise FileExistsError(
                f"{cfg.root} holds scene questions made with other settings. Fix: delete it (rm -r {cfg.root}) or "
                "choose another --root."
            )
        return summary
    if cfg.root.exists():
        raise FileExistsError(f"{cfg.root} exists but holds no finished scene questions; delete it or choose another --root.")
    staging = cfg.root.with_name(cfg.root.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / IMAGE_DIR).mkdir(parents=True)
    rng = random.Random(seeds.start)
    envs = {task: SO101LangEnv(task, cfg.image_height, cfg.image_width, images=False, variation=cfg.variation)
            for task in TASK_NAMES}  # fmt: skip
    candidates, frames = [], {}
    try:
        for index in range(cfg.episodes):
            env = envs[TASK_NAMES[index % len(TASK_NAMES)]]
            frames[index] = frame_at_random_step(env, ScriptedExpert(env), seeds[index], rng)
            image = f"{IMAGE_DIR}/{index:06d}.png"
            candidates += [record(image, index, *q) for q in questions(scene_facts(env), rng)]
    finally:
        for env in envs.values():
            env.close()
    kept = balanced(candidates, rng)
    for index in sorted({int(item["id"].split("-")[1]) for item in kept}):
        Image.fromarray(frames[index]).save(staging / IMAGE_DIR / f"{index:06d}.png")
    for number, item in enumerate(kept):
        item["id"] = f"{item['id']}-{number}"
    (staging / VQA_FILE).write_text(json.dumps(kept))
    counts = Counter(f"{item['type']}={item['conversations'][-1]['value']}" for item in kept)
    summary = {"records": len(kept), "scenes": cfg.episodes, "seeds": [seeds.start, seeds.start + cfg.episodes - 1],
               "classes": dict(sorted(counts.items())), "settings": settings}  # fmt: skip
    (staging / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    os.replace(staging, cfg.root)
    return summary


def read_records(root: Path) -> list[dict]:
    return json.loads((Path(root) / VQA_FILE).read_text())


def majority_accuracy(train: list[dict], test: list[dict]) -> float:
    """Accuracy on ``test`` of answering each question type with its most frequent answer in ``train`` (blind)."""
    correct = majority_correct(train, test)
    return sum(correct) / len(correct)


def majority_correct(train: list[dict], test: list[dict]) -> list[bool]:
    """Per ``test`` record, whether its type's most frequent answer in ``train`` is right (image-blind)."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for item in train:
        counts[item["type"]][item["conversations"][-1]["value"]] += 1
    guesses = {kind: counter.most_common(1)[0][0] for kind, counter in counts.items()}
    return [guesses.get(item["type"]) == item["conversations"][-1]["value"] for item in test]


def answer_accuracy(model_path: str | Path, records: list[dict], image_root: Path) -> float:
    """Share of ``records`` whose true answer the model finds likeliest among the question's ``options``."""
    correct = answers_correct(model_path, records, image_root)
    return sum(correct) / len(correct)


def answers_correct(model_path: str | Path, records: list[dict], image_root: Path) -> list[bool]:
    """Per record, whether the model finds its true answer likeliest among the question's ``options`` (scored,
    not generated: a short answer's format cannot decide it)."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from lerobot_roboalign.align.vqa import image_paths, llava_turns, open_images

    model = AutoModelForImageTextToText.from_pretrained(model_path).eval()
    processor = AutoProcessor.from_pretrained(model_path)
    correct = []
    with torch.no_grad():
        for item in records:
            prompt, completion = llava_turns(item)
            images = open_images(image_paths(item, Path(image_root)))
            scores = [answer_log_likelihood(model, processor, prompt, option, images) for option in item["options"]]
            correct.append(item["options"][scores.index(max(scores))] == completion[0]["content"])
    return correct


def answer_log_likelihood(model, processor, prompt: list[dict], answer: str, images: list) -> float:
    """log p(answer turn | prompt, images) under the model, as SFT's completion-only loss counts it."""
    from trl.data_utils import prepare_multimodal_messages

    def tokens(messages: list[dict], **kwargs):
        conversation = prepare_multimodal_messages(messages, images=images)
        return processor.apply_chat_template(conversation, tokenize=True, return_dict=True, return_tensors="pt",
                                             **kwargs)  # fmt: skip

    start = tokens(prompt, add_generation_prompt=True)["input_ids"].shape[1]
    inputs = tokens([*prompt, {"role": "assistant", "content": answer}])
    logits = model(**inputs).logits[0, start - 1 : -1].log_softmax(-1)
    return float(logits.gather(-1, inputs["input_ids"][0, start:, None]).sum())


def main(argv: list[str] | None = None) -> None:
    cfg = draccus.parse(config_class=SceneVQAConfig, args=argv)
    print(json.dumps(write_scene_vqa(cfg), indent=2))
