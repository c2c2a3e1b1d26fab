"""The GRPO rewards, one test per edge case the paper leaves open (see align/rewards.py)."""

import pytest

from lerobot_roboalign.align.common import stop_token_ids
from lerobot_roboalign.align.data import answer_text
from lerobot_roboalign.align.rewards import (
    follows_format,
    l1_reward,
    make_reward_funcs,
    prefix_match_reward,
    total_rewards,
)

TARGET = [5, 9, 2, 7]


@pytest.mark.parametrize(
    ("generated", "expected"),
    [
        (TARGET, 1.0),  # full match
        ([5, 9], 0.5),  # shorter generation: matched prefix / target length
        ([5, 9, 3, 7], 0.5),  # mismatch in the middle: prefix only
        ([1, 9, 2, 7], 0.0),  # no match at the first token
        (None, 0.0),  # unparseable completion
        ([], 0.0),  # empty span
        (TARGET + [1, 1], 4 / 6),  # extra tokens after a full match are penalised like missing ones
    ],
)
def test_prefix_match_reward_edge_cases(generated, expected):
    assert prefix_match_reward(generated, TARGET) == pytest.approx(expected)


def test_prefix_match_reward_empty_target():
    assert prefix_match_reward([], []) == 1.0
    assert prefix_match_reward([3], []) == 0.0


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("<think>move left</think><answer><ACTION_START><act_1><ACTION_END></answer>", True),
        (" <think>move\nleft</think>\n<answer> <ACTION_START><act_1><ACTION_END> </answer>\n", True),
        ("<think> </think><answer><ACTION_START><act_1><ACTION_END></answer>", False),  # empty reasoning
        ("<answer><ACTION_START><act_1><ACTION_END></answer>", False),  # no think block
        ("<think>go</think><answer><ACTION_START><act_1></answer>", False),  # unclosed action span
        ("<think>go</think><answer><ACTION_START><act_1><ACTION_END></answer> and more", False),  # trailing text
        ("<think>go</think><answer>move left</answer>", False),  # no action span
    ],
)
def test_follows_format(text, ok):
    assert follows_format(text) is ok


def completion_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def test_token_rewards_on_real_tokenizer(extended_backbone):
    model, processor, vocabulary, fast, chunks = extended_backbone
    tokenizer = processor.tokenizer
    target = fast.encode(chunks[:1])[0]
    stop = stop_token_ids(tokenizer, model.generation_config)
    funcs = make_reward_funcs("prefix", tokenizer, vocabulary, fast, stop)
    good = completion_ids(tokenizer, answer_text("move left", vocabulary.format_span(target)))
    half = completion_ids(tokenizer, answer_text("move left", vocabulary.format_span(target[: len(target) // 2])))
    text_in_span = completion_ids(tokenizer, "<think>go</think><answer><ACTION_START>left<ACTION_END></answer>")
    after_eos = good + completion_ids(tokenizer, " trailing text after the end")
    ids = [good, half, text_in_span, after_eos]
    inputs = dict(completions=None, completion_ids=ids, fast_tokens=[target] * len(ids))
    assert funcs[0](**inputs) == [1.0, 1.0, 0.0, 1.0]
    assert funcs[1](**inputs) == pytest.approx([1.0, (len(target) // 2) / len(target), 0.0, 1.0])
    assert total_rewards(funcs, **inputs)[0] == pytest.approx(1.0)


def test_l1_reward(extended_backbone):
    _, _, _, fast, chunks = extended_backbone
    target = fast.encode(chunks[:1])[0]
    other = fast.encode(chunks[1:2])[0]
    assert l1_reward(target, target, fast, scale=0.2) == pytest.approx(1.0)
    assert 0.0 < l1_reward(other, target, fast, scale=0.2) < 1.0
    assert l1_reward(None, target, fast, scale=0.2) == 0.0
    assert l1_reward(target + target, target, fast, scale=0.2) == 0.0  # decodes to the wrong length


def test_l1_reward_decreases_with_error(extended_backbone):
    _, _, _, fast, chunks = extended_backbone
    base = chunks[:1]
    target = fast.encode(base)[0]
    rewards = [l1_reward(fast.encode(base + shift)[0], target, fast, 0.2) for shift in (0.05, 0.3, 0.8)]
    assert rewards == sorted(rewards, reverse=True) and rewards[0] > rewards[-1]


def test_unknown_reward_kind(extended_backbone):
    model, processor, vocabulary, fast, _ = extended_backbone
    with pytest.raises(ValueError, match="--grpo.reward=prefix"):
        make_reward_funcs("bleu", processor.tokenizer, vocabulary, fast, set())
