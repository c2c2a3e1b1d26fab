"""FAST tokenizer: quantisation bound, invalid sequences, Hub layout, fitting on LeRobotDatasets.

The bound: with an orthonormal DCT C, rounding moves each scaled coefficient by at most 1/2, so each
coefficient error |d_k| <= 0.5/scale. The inverse C^T keeps the L2 norm (Parseval), hence per action
dimension ||e||_2 <= 0.5/scale * sqrt(H), and per element |e_t| = |sum_k C_kt d_k| <= 0.5/scale *
sum_k |C_kt| <= 0.5/scale * sqrt(H) (Cauchy-Schwarz, column norm 1). In raw units multiply by the
percentile half-span (q99 - q01) / 2. Inputs are drawn inside [q01, q99] so clipping plays no part.
"""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.fft import dct
from tokenizers import ByteLevelBPETokenizer, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from lerobot_roboalign.fast import (
    HUB_FILES,
    FastTokenizer,
    InvalidActionTokens,
    dataset_action_chunks,
    fit_from_datasets,
)

H, D, SCALE = 16, 7, 10.0
HUB_CONFIG_KEYS = {
    "action_dim",
    "auto_map",
    "min_token",
    "processor_class",
    "scale",
    "time_horizon",
    "vocab_size",
}


def smooth_chunks(rng: np.random.Generator, n: int, noise: float = 0.0) -> np.ndarray:
    t = np.linspace(0, 1, H)[None, :, None]
    freq, phase = rng.uniform(0.2, 2.0, (n, 1, D)), rng.uniform(0, 1, (n, 1, D))
    chunks = rng.uniform(0.5, 2.0, (n, 1, D)) * np.sin(2 * np.pi * (freq * t + phase)) + rng.normal(
        0, 1, (n, 1, D)
    )
    return chunks + noise * rng.normal(size=chunks.shape)


@pytest.fixture(scope="module")
def tokenizer() -> FastTokenizer:
    rng = np.random.default_rng(0)
    return FastTokenizer.fit(
        np.concatenate([smooth_chunks(rng, 1500), smooth_chunks(rng, 500, noise=0.3)]),
        scale=SCALE,
        vocab_size=512,
    )


def assert_within_quantisation_bound(tokenizer: FastTokenizer, chunks: np.ndarray) -> None:
    decoded, valid = tokenizer.decode(tokenizer.encode(chunks))
    assert valid.all()
    half_span = (tokenizer.q99 - tokenizer.q01) / 2
    normalized_error = (decoded - chunks) / half_span
    bound = 0.5 / tokenizer.scale * np.sqrt(tokenizer.chunk_size)
    assert np.abs(normalized_error).max() <= bound + 1e-9
    assert np.linalg.norm(normalized_error, axis=1).max() <= bound + 1e-9


def inside_percentiles(tokenizer: FastTokenizer, unit: np.ndarray) -> np.ndarray:
    """Map values in [-1, 1] to raw actions inside [q01, q99]."""
    return tokenizer.denormalize(np.clip(unit, -1, 1))


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 32),
    amplitude=st.floats(0.05, 1.0),
    frequency=st.floats(0.0, 3.0),
)
def test_smooth_round_trip_within_bound(tokenizer, seed, n, amplitude, frequency):
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, H)[None, :, None]
    unit = amplitude * np.sin(2 * np.pi * (frequency * t + rng.uniform(0, 1, (n, 1, D))))
    unit += rng.uniform(-1, 1, (n, 1, D)) * (1 - amplitude)
    assert_within_quantisation_bound(tokenizer, inside_percentiles(tokenizer, unit))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 32))
def test_noisy_round_trip_within_bound(tokenizer, seed, n):
    unit = np.random.default_rng(seed).uniform(-1, 1, (n, H, D))
    assert_within_quantisation_bound(tokenizer, inside_percentiles(tokenizer, unit))


def test_bound_is_tight_enough_to_catch_a_wrong_scale(tokenizer):
    """Decoding with another scale than encoding breaks the bound, so the property tests can fail."""
    chunks = inside_percentiles(tokenizer, np.random.default_rng(1).uniform(-1, 1, (8, H, D)))
    ids = tokenizer.encode(chunks)
    tokenizer.scale *= 2
    try:
        decoded, _ = tokenizer.decode(ids)
    finally:
        tokenizer.scale /= 2
    error = np.abs(decoded - chunks) / ((tokenizer.q99 - tokenizer.q01) / 2)
    assert error.max() > 0.5 / tokenizer.scale * np.sqrt(H)


def test_smooth_chunks_compress(tokenizer):
    ids = tokenizer.encode(smooth_chunks(np.random.default_rng(2), 200))
    assert np.mean([len(x) for x in ids]) < H * D / 3


def test_batch_encode_matches_per_chunk_fast_algorithm(tokenizer):
    """Each chunk alone, as the FAST reference does it: DCT, scale, round, chr(value - min_token), BPE."""
    chunks = smooth_chunks(np.random.default_rng(3), 50, noise=0.1)
    expected = []
    for chunk in chunks:
        coefficients = np.around(dct(tokenizer.normalize(chunk), axis=0, norm="ortho") * tokenizer.scale)
        text = "".join(map(chr, (coefficients.flatten() - tokenizer.min_token).astype(int)))
        expected.append(tokenizer.bpe.encode(text).ids)
    assert tokenizer.encode(chunks) == expected


@pytest.mark.parametrize("shape", [(4, H - 1, D), (4, H, D + 1), (H, D)])
def test_other_chunk_shapes_are_rejected(tokenizer, shape):
    with pytest.raises(ValueError, match=r"chunk|\[N, H, D\]"):
        tokenizer.encode(np.zeros(shape))


def test_non_finite_actions_are_rejected(tokenizer):
    chunks = np.zeros((2, H, D))
    chunks[1, 3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        tokenizer.encode(chunks)


@pytest.fixture
def valid_ids(tokenizer) -> list[list[int]]:
    return tokenizer.encode(smooth_chunks(np.random.default_rng(4), 3))


def assert_only_first_invalid(tokenizer, token_lists, reason):
    chunks, valid = tokenizer.decode(token_lists)
    assert valid.tolist() == [False] + [True] * (len(token_lists) - 1)
    assert np.isnan(chunks[0]).all() and np.isfinite(chunks[1:]).all()
    with pytest.raises(InvalidActionTokens, match=reason) as error:
        tokenizer.decode_strict(token_lists)
    assert list(error.value.reasons) == [0]


def test_truncated_sequence_is_invalid(tokenizer, valid_ids):
    assert_only_first_invalid(tokenizer, [valid_ids[0][:-1]] + valid_ids[1:], "expected 112")


def test_extra_token_is_invalid(tokenizer, valid_ids):
    assert_only_first_invalid(tokenizer, [valid_ids[0] + valid_ids[1][:1]] + valid_ids[1:], "expected 112")


@pytest.mark.parametrize("bad_id", [-1, 10**6])
def test_ids_outside_vocabulary_are_invalid(tokenizer, valid_ids, bad_id):
    assert_only_first_invalid(
        tokenizer, [valid_ids[0][:-1] + [bad_id]] + valid_ids[1:], "outside the FAST vocab"
    )


def test_empty_sequence_is_invalid(tokenizer, valid_ids):
    assert_only_first_invalid(tokenizer, [[]] + valid_ids[1:], "empty")


def test_decode_strict_returns_valid_chunks(tokenizer, valid_ids):
    np.testing.assert_allclose(tokenizer.decode_strict(valid_ids), tokenizer.decode(valid_ids)[0])


def test_vocab_too_small_for_scale_is_rejected():
    with pytest.raises(ValueError, match="lower --scale or raise --vocab_size"):
        FastTokenizer.fit(np.zeros((4, H, D)), scale=100, vocab_size=256)


def test_save_load_gives_identical_tokens(tokenizer, tmp_path):
    chunks = smooth_chunks(np.random.default_rng(5), 100, noise=0.2)
    loaded = FastTokenizer.from_pretrained(tokenizer.save_pretrained(tmp_path / "fast"))
    assert loaded.encode(chunks) == tokenizer.encode(chunks)
    assert (loaded.chunk_size, loaded.action_dim, loaded.scale, loaded.vocab_size) == (H, D, SCALE, 512)
    np.testing.assert_array_equal(
        loaded.decode(tokenizer.encode(chunks))[0], tokenizer.decode(tokenizer.encode(chunks))[0]
    )


def test_saved_directory_has_the_hub_files_and_keys(tokenizer, tmp_path):
    path = tokenizer.save_pretrained(tmp_path / "fast")
    assert set(HUB_FILES) <= {p.name for p in path.iterdir()}
    config = json.loads((path / "processor_config.json").read_text())
    assert HUB_CONFIG_KEYS <= set(config)
    assert config["processor_class"] == "UniversalActionProcessor"
    assert config["auto_map"] == {"AutoProcessor": "processing_action_tokenizer.UniversalActionProcessor"}
    # The Hub processor encodes a chunk with the transformers tokenizer loaded from the same directory.
    hub_bpe = AutoTokenizer.from_pretrained(path)
    chunk = smooth_chunks(np.random.default_rng(6), 1)
    text = "".join(map(chr, tokenizer.coefficient_codes(chunk)[0]))
    assert hub_bpe(text, add_special_tokens=False)["input_ids"] == tokenizer.encode(chunk)[0]


def write_hub_style_fast(path, chunks: np.ndarray, scale: float = 10, vocab_size: int = 300) -> None:
    """A directory as the Hub processor's own ``fit`` leaves it: byte-level BPE, horizon left unset."""
    coefficients = [
        np.around(dct(chunk, axis=0, norm="ortho").flatten() * scale).astype(int) for chunk in chunks
    ]
    min_token = int(min(c.min() for c in coefficients))
    max_token = int(max(c.max() for c in coefficients))
    bpe = ByteLevelBPETokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[],
        show_progress=False,
        initial_alphabet=[chr(i) for i in range(max_token - min_token + 1)],
    )
    bpe._tokenizer.train_from_iterator(
        ["".join(map(chr, c - min_token)) for c in coefficients], trainer=trainer
    )
    PreTrainedTokenizerFast(tokenizer_object=bpe, clean_up_tokenization_spaces=False).save_pretrained(path)
    (path / "special_tokens_map.json").write_text("{}")
    (path / "processor_config.json").write_text(
        json.dumps(
            {
                "action_dim": None,
                "auto_map": {"AutoProcessor": "processing_action_tokenizer.UniversalActionProcessor"},
                "min_token": min_token,
                "processor_class": "UniversalActionProcessor",
                "scale": scale,
                "time_horizon": None,
                "vocab_size": vocab_size,
            }
        )
    )


def test_loads_a_hub_style_universal_tokenizer(tmp_path):
    rng = np.random.default_rng(7)
    chunks = np.clip(smooth_chunks(rng, 400) / 3, -1, 1)
    write_hub_style_fast(tmp_path, chunks)
    with pytest.raises(ValueError, match="chunk_size=H, action_dim=D"):
        FastTokenizer.from_pretrained(tmp_path)
    loaded = FastTokenizer.from_pretrained(tmp_path, chunk_size=H, action_dim=D)
    reference = AutoTokenizer.from_pretrained(tmp_path)
    held_out = np.clip(smooth_chunks(rng, 20) / 3, -1, 1)
    expected = []
    for chunk in held_out:
        codes = np.maximum(np.around(dct(chunk, axis=0, norm="ortho") * 10).flatten() - loaded.min_token, 0)
        expected.append(reference("".join(map(chr, codes.astype(int))))["input_ids"])
    ids = loaded.encode(held_out)
    assert ids == expected
    decoded, valid = loaded.decode(ids)
    assert valid.all()
    assert np.abs(decoded - held_out).max() <= 0.5 / 10 * np.sqrt(H)
    assert not loaded.decode([ids[0][:-1]])[1][0]


def test_fit_from_lerobot_dataset(synthetic_dataset):
    """Every 8-step window inside each episode is a chunk, and held-in windows decode within the bound."""
    from lerobot.datasets import LeRobotDataset

    root, repo_id = synthetic_dataset
    columns = LeRobotDataset(repo_id, root=root).hf_dataset.with_format("numpy")[:]
    actions, episodes = np.stack(columns["action"]).astype(np.float64), np.asarray(columns["episode_index"])
    chunks = dataset_action_chunks(repo_id, root, chunk_size=8)
    assert len(chunks) == sum((episodes == e).sum() - 8 + 1 for e in np.unique(episodes))
    np.testing.assert_array_equal(chunks[1], actions[1:9])

    tokenizer = fit_from_datasets([repo_id], [root], chunk_size=8, vocab_size=256)
    assert (tokenizer.chunk_size, tokenizer.action_dim) == (8, actions.shape[1])
    np.testing.assert_allclose(tokenizer.q99, np.percentile(chunks.reshape(-1, actions.shape[1]), 99, axis=0))
    decoded, valid = tokenizer.decode(tokenizer.encode(chunks))
    inside = ((chunks >= tokenizer.q01) & (chunks <= tokenizer.q99)).all(axis=(1, 2))
    assert valid.all() and inside.sum() > len(chunks) // 2
    error = np.abs(decoded - chunks)[inside] / ((tokenizer.q99 - tokenizer.q01) / 2)
    assert error.max() <= 0.5 / tokenizer.scale * np.sqrt(8) + 1e-9


def test_datasets_with_different_action_dims_are_rejected(synthetic_dataset_factory):
    first = synthetic_dataset_factory()
    second = synthetic_dataset_factory(action_dim=3, cameras=("front",), num_episodes=2, episode_length=12)
    with pytest.raises(ValueError, match="different action dims"):
        fit_from_datasets([first[1], second[1]], [first[0], second[0]], chunk_size=8)
