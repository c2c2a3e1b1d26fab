"""The CALVIN long-horizon protocol (ABC->D): chains of 5 instructions, scored by completed length.

Re-implemented from the protocol's description (Mees et al., CALVIN, 2022, and its evaluation
code's semantics), with the simulator abstracted behind ``ChainEnv``:

- A symbolic scene state (LED, light bulb, sliding door, drawer, where each block is, whether
  something is grasped). Initial states: every combination with one or two blocks on the table,
  the others in the cabinet (at most one per side), nothing grasped.
- Each of the 34 tasks has rules "if the state matches these conditions, it becomes this".
  A chain is valid when each task has exactly one applicable rule in the state left by the
  previous one and the 5 tasks come from 5 different categories.
- ``num_chains`` chains are spread evenly over the initial states; for state ``i`` tasks are drawn
  5 at a time without replacement with numpy seed ``i`` until enough valid chains are found; the
  list is then shuffled with seed 0. The official evaluation uses 1000 chains.
- Rollout: reset the scene to the chain's initial state, then for each instruction give the
  policy at most 360 steps; the robot is not reset between instructions, and the chain stops at
  the first failure. Score: success rate at 1..5 and the average number of completed tasks.
"""

import itertools
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

CHAIN_LENGTH = 5
MAX_STEPS_PER_SUBTASK = 360
COLORS = ("red", "blue", "pink")
BLOCKS = tuple(f"{color}_block" for color in COLORS)
CABINET = ("slider_right", "slider_left")

State = dict[str, Any]
# A rule: (conditions, effects). A condition value that is a tuple means "any of these".
Rule = tuple[dict[str, Any], dict[str, Any]]

# The instruction given for each task: CALVIN's validation annotations, ``val_annotations[task][0]``
# of mees/calvin fa03f01 ``calvin_models/conf/annotations/new_playtable_validation.yaml`` (a test
# compares them with that file when ../shared/calvin is present). The keys follow the official
# task list's order: chain sampling draws from this order, so it must not change.
INSTRUCTIONS: dict[str, str] = {
    "rotate_red_block_right": "take the red block and rotate it to the right",
    "rotate_red_block_left": "take the red block and rotate it to the left",
    "rotate_blue_block_right": "take the blue block and rotate it to the right",
    "rotate_blue_block_left": "take the blue block and rotate it to the left",
    "rotate_pink_block_right": "take the pink block and rotate it to the right",
    "rotate_pink_block_left": "take the pink block and rotate it to the left",
    "push_red_block_right": "go push the red block right",
    "push_red_block_left": "go push the red block left",
    "push_blue_block_right": "go push the blue block right",
    "push_blue_block_left": "go push the blue block left",
    "push_pink_block_right": "go push the pink block right",
    "push_pink_block_left": "go push the pink block left",
    "move_slider_left": "push the sliding door to the left side",
    "move_slider_right": "push the sliding door to the right side",
    "open_drawer": "pull the handle to open the drawer",
    "close_drawer": "push the handle to close the drawer",
    "lift_red_block_table": "grasp and lift the red block",
    "lift_red_block_slider": "lift the red block from the sliding cabinet",
    "lift_red_block_drawer": "Take the red block from the drawer",
    "lift_blue_block_table": "grasp and lift the blue block",
    "lift_blue_block_slider": "lift the blue block from the sliding cabinet",
    "lift_blue_block_drawer": "Take the blue block from the drawer",
    "lift_pink_block_table": "grasp and lift the pink block",
    "lift_pink_block_slider": "lift the pink block from the sliding cabinet",
    "lift_pink_block_drawer": "Take the pink block from the drawer",
    "place_in_slider": "store the grasped block in the sliding cabinet",
    "place_in_drawer": "store the grasped block in the drawer",
    "stack_block": "stack the grasped block",
    "unstack_block": "remove the stacked block",
    "turn_on_lightbulb": "use the switch to turn on the light bulb",
    "turn_off_lightbulb": "use the switch to turn off the light bulb",
    "turn_on_led": "press the button to turn on the led light",
    "turn_off_led": "press the button to turn off the led light",
    "push_into_drawer": "slide the block that it falls into the drawer",
}


def _category(task: str) -> str:
    """Tasks of one category never appear twice in a chain (e.g. two lifts from the table)."""
    if task.startswith(("rotate_", "push_")) and task.endswith(("_right", "_left")):
        return "move_block"
    if task.startswith("lift_"):
        return "lift_from_" + task.rsplit("_", 1)[1]
    if task.startswith("place_in_"):
        return "place"
    if task.startswith("turn_"):
        return "light"
    return {
        "move_slider_left": "slider",
        "move_slider_right": "slider",
        "open_drawer": "drawer",
        "close_drawer": "drawer",
    }.get(task, task)


def _block_rules(block: str) -> dict[str, list[Rule]]:
    color = block.split("_")[0]
    on_table: Rule = ({block: "table", "grasped": 0}, {block: "table"})
    others = tuple(b for b in BLOCKS if b != block)
    rules = {
        f"{verb}_{color}_block_{side}": [on_table]
        for verb in ("rotate", "push")
        for side in ("right", "left")
    }
    rules[f"lift_{color}_block_table"] = [({block: "table", "grasped": 0}, {block: "grasped", "grasped": 1})]
    # A block in the cabinet is reachable only when the door is slid to the other side.
    rules[f"lift_{color}_block_slider"] = [
        ({block: "slider_left", "slider": "right", "grasped": 0}, {block: "grasped", "grasped": 1}),
        ({block: "slider_right", "slider": "left", "grasped": 0}, {block: "grasped", "grasped": 1}),
    ]
    rules[f"lift_{color}_block_drawer"] = [
        ({block: "drawer", "drawer": "open", "grasped": 0}, {block: "grasped", "grasped": 1})
    ]
    rules["push_into_drawer"] = [
        (
            {block: "table", **{o: CABINET for o in others}, "drawer": "open", "grasped": 0},
            {block: "drawer", "grasped": 0},
        )
    ]
    rules["place_in_slider"] = [
        ({block: "grasped", "slider": door, "grasped": 1}, {block: f"slider_{door}", "grasped": 0})
        for door in ("right", "left")
    ]
    rules["place_in_drawer"] = [
        ({block: "grasped", "drawer": "open", "grasped": 1}, {block: "drawer", "grasped": 0})
    ]
    rules["stack_block"] = [
        (
            {block: "grasped", other: "table", "grasped": 1},
            {block: "stacked_top", other: "stacked_bottom", "grasped": 0},
        )
        for other in others
    ]
    rules["unstack_block"] = [
        ({block: "stacked_top", other: "stacked_bottom", "grasped": 0}, {block: "table", other: "table"})
        for other in others
    ]
    return rules


def task_rules() -> dict[str, list[Rule]]:
    """The 34 tasks' rules; tasks shared by all blocks collect one rule per block."""
    rules: dict[str, list[Rule]] = {
        "move_slider_left": [({"slider": "right", "grasped": 0}, {"slider": "left"})],
        "move_slider_right": [({"slider": "left", "grasped": 0}, {"slider": "right"})],
        "open_drawer": [({"drawer": "closed", "grasped": 0}, {"drawer": "open"})],
        "close_drawer": [({"drawer": "open", "grasped": 0}, {"drawer": "closed"})],
        "turn_on_lightbulb": [({"lightbulb": 0, "grasped": 0}, {"lightbulb": 1})],
        "turn_off_lightbulb": [({"lightbulb": 1, "grasped": 0}, {"lightbulb": 0})],
        "turn_on_led": [({"led": 0, "grasped": 0}, {"led": 1})],
        "turn_off_led": [({"led": 1, "grasped": 0}, {"led": 0})],
    }
    for block in BLOCKS:
        for task, block_rules in _block_rules(block).items():
            rules.setdefault(task, []).extend(block_rules)
    return {task: rules[task] for task in INSTRUCTIONS}


def _matches(state: State, conditions: dict[str, Any]) -> bool:
    return all(state[k] in v if isinstance(v, tuple) else state[k] == v for k, v in conditions.items())


def next_states(state: State, rules: list[Rule]) -> list[State]:
    return [{**state, **effects} for conditions, effects in rules if _matches(state, conditions)]


def is_valid_chain(state: State, chain: tuple[str, ...], rules: dict[str, list[Rule]]) -> bool:
    """Each task must apply in exactly one way, and no two tasks may share a category."""
    for task in chain:
        outcomes = next_states(state, rules[task])
        if len(outcomes) != 1:
            return False
        state = outcomes[0]
    return len({_category(task) for task in chain}) == len(chain)


def initial_states() -> list[State]:
    """Scenes with 1-2 blocks on the table, the rest in the cabinet (one per side at most)."""
    states = []
    for led, bulb, slider, drawer in itertools.product((0, 1), (0, 1), ("right", "left"), ("closed", "open")):
        for places in itertools.product(("table", *CABINET), repeat=len(BLOCKS)):
            if places.count("table") in (1, 2) and all(places.count(side) < 2 for side in CABINET):
                states.append(
                    {
                        "led": led,
                        "lightbulb": bulb,
                        "slider": slider,
                        "drawer": drawer,
                        **dict(zip(BLOCKS, places, strict=True)),
                        "grasped": 0,
                    }
                )
    return states


def sample_chains(num_chains: int = 1000, seed: int = 0) -> list[tuple[State, tuple[str, ...]]]:
    """The evaluation chains: (initial state, 5 task names), spread evenly over initial states."""
    rules = task_rules()
    task_names = list(rules)
    categories = [_category(task) for task in task_names]
    states = initial_states()
    per_state = [len(part) for part in np.array_split(np.arange(num_chains), len(states))]
    chains = []
    for index, (state, count) in enumerate(
        tqdm(list(zip(states, per_state, strict=True)), desc="Sampling chains")
    ):
        rng = np.random.RandomState(index)
        found = 0
        while found < count:
            # Same draw as rng.choice(task_names, 5, replace=False); categories are checked first as
            # the cheap filter (most draws repeat a category).
            picked = rng.permutation(len(task_names))[:CHAIN_LENGTH]
            if len({categories[i] for i in picked}) < CHAIN_LENGTH:
                continue
            chain = tuple(task_names[i] for i in picked)
            if is_valid_chain(state, chain, rules):
                chains.append((state, chain))
                found += 1
    order = np.random.RandomState(seed).permutation(len(chains))
    return [chains[i] for i in order]


class ChainEnv(Protocol):
    """What the protocol needs from a simulator (the real CALVIN env or a test stand-in)."""

    def reset_to(self, initial_state: State) -> Any: ...  # returns the first observation
    def begin_subtask(self) -> None: ...  # remember the scene, to judge the next task against it
    def step(self, action: np.ndarray) -> Any: ...  # returns the next observation
    def task_completed(self, task: str) -> bool: ...  # did `task` happen since begin_subtask()?


class ChainPolicy(Protocol):
    def reset(self) -> None: ...
    def __call__(self, observation: Any, instruction: str) -> np.ndarray: ...


@dataclass
class ChainResult:
    initial_state: State
    tasks: tuple[str, ...]
    completed: int  # tasks done before the first failure, 0..5
    steps: list[int] = field(default_factory=list)  # steps spent on each attempted task


def run_subtask(
    env: ChainEnv, policy: ChainPolicy, observation: Any, task: str, max_steps: int
) -> tuple[bool, Any, int]:
    policy.reset()
    env.begin_subtask()
    for step in range(1, max_steps + 1):
        observation = env.step(policy(observation, INSTRUCTIONS[task]))
        if env.task_completed(task):
            return True, observation, step
    return False, observation, max_steps


def run_chain(
    env: ChainEnv,
    policy: ChainPolicy,
    initial_state: State,
    tasks: tuple[str, ...],
    max_steps: int = MAX_STEPS_PER_SUBTASK,
) -> ChainResult:
    """Run one chain; stop at the first task not completed within ``max_steps``."""
    result = ChainResult(initial_state, tasks, completed=0)
    observation = env.reset_to(initial_state)
    for task in tasks:
        success, observation, steps = run_subtask(env, policy, observation, task, max_steps)
        result.steps.append(steps)
        if not success:
            break
        result.completed += 1
    return result


def evaluate_chains(
    env: ChainEnv,
    policy: ChainPolicy,
    chains: list[tuple[State, tuple[str, ...]]],
    max_steps: int = MAX_STEPS_PER_SUBTASK,
    on_result: Callable[[ChainResult], None] | None = None,
) -> list[ChainResult]:
    results = []
    progress = tqdm(chains, desc="CALVIN chains", unit="chain")
    for initial_state, tasks in progress:
        results.append(run_chain(env, policy, initial_state, tasks, max_steps))
        if on_result is not None:
            on_result(results[-1])
        progress.set_postfix(avg_len=f"{average_length(results):.2f}")
    return results


def average_length(results: list[ChainResult]) -> float:
    return float(np.mean([r.completed for r in results])) if results else 0.0


def summarize(results: list[ChainResult]) -> dict[str, Any]:
    """Success rate at 1..5 (share of chains with at least k tasks done), average length, per task."""
    if not results:
        raise ValueError("No CALVIN chains were evaluated: set --num_chains to at least 1.")
    completed = [r.completed for r in results]
    attempts, successes = Counter(), Counter()
    for r in results:
        for i, task in enumerate(r.tasks[: len(r.steps)]):
            attempts[task] += 1
            successes[task] += int(i < r.completed)
    return {
        "num_chains": len(results),
        "success_rate": {
            str(k): float(np.mean([c >= k for c in completed])) for k in range(1, CHAIN_LENGTH + 1)
        },
        "average_length": average_length(results),
        "per_task": {
            t: {
                "attempts": attempts[t],
                "successes": successes[t],
                "success_rate": successes[t] / attempts[t],
            }
            for t in sorted(attempts)
        },
    }


def markdown_table(summary: dict[str, Any], reference: dict[str, float] | None = None) -> str:
    header = "| | " + " | ".join(f"{k}/5" for k in summary["success_rate"]) + " | Avg. len |"
    lines = [header, "|---" * (CHAIN_LENGTH + 2) + "|"]
    rates = " | ".join(f"{100 * v:.1f}%" for v in summary["success_rate"].values())
    lines.append(f"| this run ({summary['num_chains']} chains) | {rates} | {summary['average_length']:.2f} |")
    for name, avg_len in (reference or {}).items():
        lines.append(f"| {name} (paper) |" + " |" * CHAIN_LENGTH + f" {avg_len:.2f} |")
    return "\n".join(lines) + "\n"


def write_results(
    summary: dict[str, Any],
    results: list[ChainResult],
    output_dir: Path,
    reference: dict[str, float] | None = None,
) -> None:
    """``results.json`` (summary + every chain), ``results.md`` (table) and ``results.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    output_dir.mkdir(parents=True, exist_ok=True)
    chains = [
        {"initial_state": r.initial_state, "tasks": list(r.tasks), "completed": r.completed, "steps": r.steps}
        for r in results
    ]
    (output_dir / "results.json").write_text(json.dumps({**summary, "chains": chains}, indent=2))
    (output_dir / "results.md").write_text(markdown_table(summary, reference))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ks = list(summary["success_rate"])
    ax.bar(ks, [100 * v for v in summary["success_rate"].values()], color="tab:blue")
    ax.set(
        xlabel="tasks completed in a row",
        ylabel="success rate (%)",
        ylim=(0, 100),
        title=f"CALVIN ABC->D, avg. len {summary['average_length']:.2f} ({summary['num_chains']} chains)",
    )
    fig.tight_layout()
    fig.savefig(output_dir / "results.png", dpi=120)
    plt.close(fig)
