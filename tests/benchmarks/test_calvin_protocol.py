"""The CALVIN ABC->D protocol logic, against scripted stand-in envs (the real simulator: test_calvin_sim.py)."""

import json

import numpy as np
import pytest

from lerobot_roboalign.calvin.protocol import (
    CHAIN_LENGTH,
    INSTRUCTIONS,
    evaluate_chains,
    initial_states,
    is_valid_chain,
    next_states,
    sample_chains,
    summarize,
    task_rules,
    write_results,
)

NUM_CHAINS = 24
MAX_STEPS = 6


class ScriptedEnv:
    """Completes a task after 2 steps unless it is the chain's ``fail_at``-th task (0-based)."""

    def __init__(self, fail_at: int | None):
        self.fail_at = fail_at
        self.resets = 0

    def reset_to(self, initial_state):
        self.resets += 1
        self.subtask, self.steps = -1, 0
        return {"subtask": self.subtask}

    def begin_subtask(self):
        self.subtask += 1
        self.steps = 0

    def step(self, action):
        assert action.shape == (7,)
        self.steps += 1
        return {"subtask": self.subtask, "step": self.steps}

    def task_completed(self, task):
        return self.subtask != self.fail_at and self.steps >= 2


class RecordingPolicy:
    def __init__(self):
        self.instructions, self.resets = [], 0

    def reset(self):
        self.resets += 1

    def __call__(self, observation, instruction):
        self.instructions.append(instruction)
        return np.zeros(7, dtype=np.float32)


@pytest.fixture(scope="module")
def chains():
    return sample_chains(NUM_CHAINS)


@pytest.mark.parametrize(("fail_at", "expected"), [(None, 5.0), (0, 0.0), (2, 2.0)])
def test_average_length(chains, fail_at, expected):
    env, policy = ScriptedEnv(fail_at), RecordingPolicy()
    summary = summarize(evaluate_chains(env, policy, chains, max_steps=MAX_STEPS))
    assert summary["average_length"] == expected
    done = int(expected)
    assert summary["success_rate"] == {str(k): float(k <= done) for k in range(1, CHAIN_LENGTH + 1)}
    assert env.resets == NUM_CHAINS  # one scene reset per chain, none between its tasks
    # Early stop: tasks after the failing one are never attempted.
    attempted = min(CHAIN_LENGTH, done + 1)
    assert sum(t["attempts"] for t in summary["per_task"].values()) == NUM_CHAINS * attempted
    assert policy.resets == NUM_CHAINS * attempted
    steps_per_chain = 2 * done + (MAX_STEPS if done < CHAIN_LENGTH else 0)
    assert len(policy.instructions) == NUM_CHAINS * steps_per_chain


def test_instructions_follow_the_chain(chains):
    policy = RecordingPolicy()
    evaluate_chains(ScriptedEnv(None), policy, chains[:1], max_steps=MAX_STEPS)
    expected = [INSTRUCTIONS[task] for task in chains[0][1] for _ in range(2)]
    assert policy.instructions == expected


def test_chains_are_valid_deterministic_and_spread_over_initial_states(chains):
    rules = task_rules()
    assert len(rules) == 34 and set(rules) == set(INSTRUCTIONS)
    states = initial_states()
    assert len(states) == 192
    assert len(chains) == NUM_CHAINS
    for state, chain in chains:
        assert len(set(chain)) == CHAIN_LENGTH
        assert is_valid_chain(state, chain, rules)
    assert sample_chains(NUM_CHAINS) == chains
    assert len({json.dumps(s, sort_keys=True) for s, _ in chains}) == NUM_CHAINS  # 24 chains over 192 states


def test_rules_track_the_scene():
    rules = task_rules()
    state = {
        "led": 0,
        "lightbulb": 0,
        "slider": "right",
        "drawer": "closed",
        "red_block": "table",
        "blue_block": "slider_left",
        "pink_block": "table",
        "grasped": 0,
    }
    assert next_states(state, rules["open_drawer"]) == [{**state, "drawer": "open"}]
    assert next_states(state, rules["close_drawer"]) == []
    (lifted,) = next_states(state, rules["lift_blue_block_slider"])  # door on the right: left side reachable
    assert lifted["blue_block"] == "grasped" and lifted["grasped"] == 1
    assert (
        len(next_states(lifted, rules["stack_block"])) == 2
    )  # onto red or pink: ambiguous, never in a chain
    assert not is_valid_chain(
        state,
        ("lift_red_block_table", "lift_pink_block_table", "open_drawer", "turn_on_led", "move_slider_left"),
        rules,
    )  # two lifts from the table


def test_results_are_written(chains, tmp_path):
    results = evaluate_chains(ScriptedEnv(2), RecordingPolicy(), chains[:4], max_steps=MAX_STEPS)
    summary = summarize(results)
    write_results(summary, results, tmp_path, reference={"RoboAlign": 2.57})
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["average_length"] == 2.0 and len(saved["chains"]) == 4
    assert saved["chains"][0]["steps"] == [2, 2, MAX_STEPS]
    table = (tmp_path / "results.md").read_text()
    assert "| this run (4 chains) | 100.0% | 100.0% | 0.0% | 0.0% | 0.0% | 2.00 |" in table
    assert "RoboAlign (paper)" in table
    assert (tmp_path / "results.png").stat().st_size > 1000
