"""Action vocabulary on the tiny Qwen2.5-VL: extension, id mapping, spans, save/load, generation."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from lerobot_roboalign.action_vocab import ACTION_END, ACTION_START, ActionVocabulary, action_token
from lerobot_roboalign.fast import FastTokenizer

H, D = 8, 3


@pytest.fixture(scope="module")
def fast_tokenizer() -> FastTokenizer:
    rng = np.random.default_rng(0)
    return FastTokenizer.fit(np.cumsum(rng.normal(size=(400, H, D)), axis=1), scale=10, vocab_size=128)


@pytest.fixture
def extended(tiny_qwen25_backbone, fast_tokenizer):
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_pretrained(tiny_qwen25_backbone)
    processor = AutoProcessor.from_pretrained(tiny_qwen25_backbone)
    old_len = len(processor.tokenizer)
    old_input = model.get_input_embeddings().weight[:old_len].detach().clone()
    vocab = ActionVocabulary.extend(model, processor, fast_tokenizer)
    return model, processor, vocab, old_len, old_input


def test_extend_adds_tokens_and_mean_rows(extended, fast_tokenizer):
    model, processor, vocab, old_len, old_input = extended
    n_fast = fast_tokenizer.bpe.get_vocab_size()
    assert len(processor.tokenizer) == old_len + 2 + n_fast
    assert vocab.start_id == processor.tokenizer.convert_tokens_to_ids(ACTION_START)
    assert vocab.end_id == processor.tokenizer.convert_tokens_to_ids(ACTION_END)
    assert model.get_input_embeddings().num_embeddings >= len(processor.tokenizer)
    new = torch.as_tensor([vocab.start_id, vocab.end_id, *vocab.action_ids.tolist()])
    for weight, reference in [
        (model.get_input_embeddings().weight, old_input),
        (model.get_output_embeddings().weight, None),
    ]:
        reference = weight[:old_len] if reference is None else reference
        torch.testing.assert_close(weight[new], reference.mean(0).expand(len(new), -1))
    torch.testing.assert_close(model.get_input_embeddings().weight[:old_len], old_input)


def test_extend_is_idempotent(extended, fast_tokenizer):
    model, processor, vocab, _, _ = extended
    rows = model.get_input_embeddings().num_embeddings
    again = ActionVocabulary.extend(model, processor, fast_tokenizer)
    assert (again.start_id, again.end_id) == (vocab.start_id, vocab.end_id)
    np.testing.assert_array_equal(again.action_ids, vocab.action_ids)
    assert model.get_input_embeddings().num_embeddings == rows


def test_id_mapping_round_trip_and_errors(extended):
    _, processor, vocab, _, _ = extended
    fast_ids = [0, 5, vocab.num_action_tokens - 1, 5]
    llm_ids = vocab.fast_to_llm(fast_ids)
    assert llm_ids == processor.tokenizer.convert_tokens_to_ids([action_token(i) for i in fast_ids])
    assert vocab.llm_to_fast(llm_ids) == fast_ids
    with pytest.raises(ValueError, match="not action tokens"):
        vocab.llm_to_fast([vocab.start_id])
    with pytest.raises(ValueError, match="FAST ids must be in"):
        vocab.fast_to_llm([vocab.num_action_tokens])


def test_span_text_tokenizes_to_mapped_ids_and_parses_back(extended, fast_tokenizer):
    _, processor, vocab, _, _ = extended
    chunk = np.cumsum(np.random.default_rng(1).normal(size=(1, H, D)), axis=1)
    fast_ids = fast_tokenizer.encode(chunk)[0]
    text = "<think>reach the cube</think><answer>" + vocab.chunks_to_spans(chunk)[0] + "</answer>"
    ids = processor.tokenizer(text, add_special_tokens=False)["input_ids"]
    start = ids.index(vocab.start_id)
    assert ids[start : start + len(fast_ids) + 2] == [
        vocab.start_id,
        *vocab.fast_to_llm(fast_ids),
        vocab.end_id,
    ]
    assert vocab.parse_span(ids) == fast_ids
    np.testing.assert_allclose(vocab.span_to_chunk(ids), fast_tokenizer.decode([fast_ids])[0][0])


def test_parse_span_rejects_incomplete_spans(extended):
    _, _, vocab, _, _ = extended
    acts = vocab.fast_to_llm([1, 2, 3])
    assert vocab.parse_span([7, *acts, vocab.end_id]) is None
    assert vocab.parse_span([vocab.start_id, *acts]) is None
    assert vocab.parse_span([vocab.start_id, acts[0], 7, vocab.end_id]) is None
    assert vocab.parse_span([vocab.start_id, *acts, vocab.end_id, 9]) == [1, 2, 3]
    assert vocab.span_to_chunk([vocab.start_id, *acts[:1], vocab.end_id]) is None


def test_save_and_load_with_the_model(extended, tmp_path):
    model, processor, vocab, _, _ = extended
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    vocab.save_pretrained(tmp_path)
    reloaded_processor = AutoProcessor.from_pretrained(tmp_path)
    loaded = ActionVocabulary.from_pretrained(tmp_path, tokenizer=reloaded_processor)
    np.testing.assert_array_equal(loaded.action_ids, vocab.action_ids)
    chunks = np.cumsum(np.random.default_rng(2).normal(size=(5, H, D)), axis=1)
    assert loaded.fast_tokenizer.encode(chunks) == vocab.fast_tokenizer.encode(chunks)
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path)
    torch.testing.assert_close(reloaded.get_input_embeddings().weight, model.get_input_embeddings().weight)


def test_loading_a_backbone_without_action_vocabulary_says_what_to_run(tiny_qwen25_backbone, tmp_path):
    with pytest.raises(FileNotFoundError, match="roboalign align sft"):
        ActionVocabulary.from_pretrained(tiny_qwen25_backbone)


def test_mismatched_tokenizer_is_rejected(extended, tiny_qwen25_backbone, tmp_path):
    vocab = extended[2]
    vocab.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="action token ids differ"):
        ActionVocabulary.from_pretrained(
            tmp_path, tokenizer=AutoProcessor.from_pretrained(tiny_qwen25_backbone)
        )


@pytest.mark.slow
def test_briefly_trained_model_generates_a_span_that_decodes(extended, fast_tokenizer):
    """A few steps on the embeddings for one prompt -> span pair; greedy generation then emits that span.

    The chunk is one whose FAST ids are all distinct, so the span is learnable as a chain of bigrams.
    """
    model, processor, vocab, _, _ = extended
    candidates = np.cumsum(np.random.default_rng(3).normal(size=(200, H, D)), axis=1)
    index = next(i for i, ids in enumerate(fast_tokenizer.encode(candidates)) if len(set(ids)) == len(ids))
    chunk = candidates[index : index + 1]
    prompt = processor.tokenizer("pick up the red cube <answer>", add_special_tokens=False)["input_ids"]
    target = processor.tokenizer(vocab.chunks_to_spans(chunk)[0], add_special_tokens=False)["input_ids"]
    input_ids = torch.tensor([prompt + target])
    labels = input_ids.clone()
    labels[0, : len(prompt)] = -100
    assert vocab.parse_span(_generate(model, prompt, len(target))) is None
    embeddings = [model.get_input_embeddings().weight, model.get_output_embeddings().weight]
    optimizer = torch.optim.Adam(embeddings, lr=3e-2)
    model.train()
    losses = []
    for _ in range(20):
        loss = model(input_ids=input_ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.02 * losses[0]
    generated = _generate(model, prompt, len(target))
    assert vocab.parse_span(generated) == fast_tokenizer.encode(chunk)[0]
    np.testing.assert_allclose(
        vocab.span_to_chunk(generated), fast_tokenizer.decode_strict(fast_tokenizer.encode(chunk))[0]
    )


def _generate(model, prompt: list[int], length: int) -> list[int]:
    model.eval()
    with torch.no_grad():
        output = model.generate(
            input_ids=torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=length + 1,
            do_sample=False,
        )
    return output[0, len(prompt) :].tolist()
