"""FAST tokenizer throughput: batch encode/decode vs straightforward per-chunk loops, same run, same tokens.

Peers, both the same algorithm (normalise, DCT, scale, round, chr, BPE) one chunk at a time:
- per-chunk (tokenizers): numpy per chunk and ``tokenizers.Tokenizer.encode``/``decode`` per chunk;
- per-chunk (FAST reference style): per chunk through a ``transformers`` tokenizer, as the Hub's
  ``physical-intelligence/fast`` processor calls it (``bpe_tokenizer(text)["input_ids"]``).

    python benchmarks/bench_fast.py [--num_chunks=10000]
"""

import argparse
import json
import os
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy.fft import dct, idct  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

from lerobot_roboalign.fast import FastTokenizer  # noqa: E402

H, D = 16, 7
RESULTS = Path(__file__).parent / "results"


def trajectories(rng: np.random.Generator, n: int) -> np.ndarray:
    """Smooth joint trajectories (random sinusoids and drifts) with a little sensor noise."""
    t = np.linspace(0, 1, H)[None, :, None]
    waves = rng.uniform(0.2, 1.5, (n, 1, D)) * np.sin(
        2 * np.pi * (rng.uniform(0.1, 1.5, (n, 1, D)) * t + rng.uniform(0, 1, (n, 1, D)))
    )
    return waves + rng.normal(0, 1, (n, 1, D)) * t + 0.01 * rng.normal(size=(n, H, D))


def encode_per_chunk(tokenizer: FastTokenizer, chunks: np.ndarray, bpe_call) -> list[list[int]]:
    span = np.maximum(tokenizer.q99 - tokenizer.q01, 1e-8)
    tokens = []
    for chunk in chunks:
        normalized = np.clip(2 * (chunk - tokenizer.q01) / span - 1, -1, 1)
        coefficients = np.around(dct(normalized, axis=0, norm="ortho") * tokenizer.scale).flatten()
        tokens.append(bpe_call("".join(map(chr, (coefficients - tokenizer.min_token).astype(int)))))
    return tokens


def decode_per_chunk(tokenizer: FastTokenizer, token_lists: list[list[int]]) -> np.ndarray:
    span = np.maximum(tokenizer.q99 - tokenizer.q01, 1e-8)
    chunks = []
    for ids in token_lists:
        codes = np.array(list(map(ord, tokenizer.bpe.decode(ids)))) + tokenizer.min_token
        normalized = idct(codes.reshape(H, D) / tokenizer.scale, axis=0, norm="ortho")
        chunks.append(tokenizer.q01 + (normalized + 1) * 0.5 * span)
    return np.stack(chunks)


def best_time(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def run(num_chunks: int, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    tokenizer = FastTokenizer.fit(trajectories(rng, 10_000), scale=10, vocab_size=2048)
    chunks = trajectories(rng, num_chunks)
    transformers_bpe = PreTrainedTokenizerFast(tokenizer_object=tokenizer.bpe)
    peers = {
        "batch": lambda: tokenizer.encode(chunks),
        "per-chunk (tokenizers)": lambda: encode_per_chunk(
            tokenizer, chunks, lambda s: tokenizer.bpe.encode(s).ids
        ),
        "per-chunk (FAST reference style)": lambda: encode_per_chunk(
            tokenizer, chunks, lambda s: transformers_bpe(s)["input_ids"]
        ),
    }
    encode_s, tokens = {}, {}
    for name, fn in peers.items():
        encode_s[name], tokens[name] = best_time(fn, repeats)
    assert all(t == tokens["batch"] for t in tokens.values()), "peers produced different tokens"
    ids = tokens["batch"]
    decode_s = {}
    decode_s["batch"], (batch_chunks, valid) = best_time(lambda: tokenizer.decode(ids), repeats)
    decode_s["per-chunk (tokenizers)"], loop_chunks = best_time(
        lambda: decode_per_chunk(tokenizer, ids), repeats
    )
    assert valid.all() and np.allclose(batch_chunks, loop_chunks)
    lengths = np.array([len(t) for t in ids])
    return {
        "tokenizers_parallelism": os.environ.get("TOKENIZERS_PARALLELISM", "unset (Rayon threads)"),
        "cpu_count": os.cpu_count(),
        "num_chunks": num_chunks,
        "chunk_shape": [H, D],
        "scale": 10,
        "vocab_size": 2048,
        "tokens_per_chunk_mean": float(lengths.mean()),
        "tokens_per_chunk_max": int(lengths.max()),
        "compression": H * D / float(lengths.mean()),
        "encode_chunks_per_s": {k: num_chunks / v for k, v in encode_s.items()},
        "decode_chunks_per_s": {k: num_chunks / v for k, v in decode_s.items()},
        "encode_speedup": {k: v / encode_s["batch"] for k, v in encode_s.items() if k != "batch"},
        "decode_speedup": {k: v / decode_s["batch"] for k, v in decode_s.items() if k != "batch"},
        "max_abs_error_normalized": float(
            np.abs(tokenizer.normalize(batch_chunks) - tokenizer.normalize(chunks)).max()
        ),
    }


def write(results: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench_fast.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        f"# FAST tokenizer throughput ({results['num_chunks']} chunks of {H}x{D}, scale 10, vocab 2048)",
        "",
        f"Tokens per chunk: mean {results['tokens_per_chunk_mean']:.1f}, "
        f"max {results['tokens_per_chunk_max']} "
        f"({results['compression']:.1f}x compression of {H * D} values). Tokens identical across peers. "
        f"{results['cpu_count']} CPUs, TOKENIZERS_PARALLELISM={results['tokenizers_parallelism']}.",
        "",
        "| operation | implementation | chunks/s | batch is faster by |",
        "|---|---|---|---|",
    ]
    for op in ("encode", "decode"):
        for name, rate in results[f"{op}_chunks_per_s"].items():
            speedup = results[f"{op}_speedup"].get(name)
            lines.append(
                f"| {op} | {name} | {rate:,.0f} | {'(this)' if speedup is None else f'{speedup:.1f}x'} |"
            )
    (RESULTS / "bench_fast.md").write_text("\n".join(lines) + "\n")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, op in zip(axes, ("encode", "decode"), strict=True):
        rates = results[f"{op}_chunks_per_s"]
        ax.barh(list(rates), list(rates.values()), color=["tab:green"] + ["tab:gray"] * (len(rates) - 1))
        ax.set(xlabel="chunks / s (higher is better)", title=f"FAST {op}, {H}x{D} chunks", xscale="log")
    fig.tight_layout()
    fig.savefig(RESULTS / "bench_fast.png", dpi=120)
    plt.close(fig)
    print("\n".join(lines))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_chunks", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    write(run(args.num_chunks, args.repeats))
