"""Alignment data at scale: peak memory and throughput of the lazy samples against the eager path they replaced.

Lazy (this package): ``load_samples`` keeps references (dataset, frame) and a few numbers per frame, ``align
sft``'s ``build_dataset`` makes a ``datasets.Dataset`` of references, and images decode when the training data
loader reads a batch. Peer: the eager path of commit 541c8f5, read from git (``load_samples`` decoded every frame
to PIL up front, the VQA rows opened every image, ``Dataset.from_list`` re-encoded them all). The peer runs only
at the smallest size: it holds every image, so its memory grows with the data (issue 25 measured 6.7 GiB at 3200
action samples) and the larger sizes do not fit here.

Each (path, size) runs in its own process; peak RSS is that process's ``ru_maxrss`` (imports included), and the
data's own memory the polled peak above the RSS after the imports. Time is split into the
preparation every rank repeats (samples and rows) and one pass of a DataLoader over all rows (decoding), which
a rank does for its own 1/ranks share, inside training. The datasets are LeRobotDatasets written with the
package's synthetic writer (two 32x32 cameras) and LLaVA-style JSON over 32x32 PNGs: small frames keep the run
to minutes on 2 cores, so decode times are lower bounds for real camera frames.

Peak RSS per row is the growth of the peak RSS from 10K to 100K rows over the 90K rows added (issue 30: memory
must stay flat per rank at the paper's 400K + 1.88M rows), in all and for anonymous memory alone (``RssAnon``:
RSS without the pages of the datasets' files that the loader pass maps in, which every rank shares and the kernel
can drop); the VQA file is LLaVA's JSON list, streamed. Data
loader throughput (samples/s over one pass) is measured with 0 and 2 worker processes on the camera-size frames,
where decoding is the work the workers take off the training process (``--training.dataloader_num_workers``).

    python benchmarks/bench_align_data.py [--action_sizes 1000 10000 100000] [--vqa_sizes 1000 10000 100000]
"""

import argparse
import importlib.util
import json
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

RESULTS = Path(__file__).parent / "results"
EAGER_COMMIT = "541c8f5"  # the last commit with the eager data path
PAPER = {"action": 400_000, "vqa": 1_880_000, "ranks": 8}
# Image sizes: "tiny" frames for the scale series (minutes on 2 cores), "camera" frames for the 1K pair with the
# peer: 640x480 cameras (1.8 MB of pixels per 2-camera sample, as in issue 25) and LLaVA's 336x336 VQA images.
SETTINGS = {"tiny": {"action": (32, 32), "vqa": (32, 32)}, "camera": {"action": (480, 640), "vqa": (336, 336)}}
EPISODE_LENGTH = 500
CHUNK = 16


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def anon_rss_mib() -> float:
    """Resident anonymous memory (heap, Arrow buffers): RSS without the file pages mapped from the datasets' files,
    which the kernel can drop and every rank shares."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class RSSMonitor(threading.Thread):
    """Polls this process's resident memory: the peak of the data work alone, above the imports' high-water mark."""

    def __init__(self, interval: float = 0.005):
        super().__init__(daemon=True)
        self.process, self.interval, self.stopped = psutil.Process(), interval, threading.Event()
        self.start_mib = self.peak_mib = self.process.memory_info().rss / 2**20
        self.anon_start_mib = self.anon_peak_mib = anon_rss_mib()

    def run(self) -> None:
        while not self.stopped.is_set():
            self.peak_mib = max(self.peak_mib, self.process.memory_info().rss / 2**20)
            self.anon_peak_mib = max(self.anon_peak_mib, anon_rss_mib())
            time.sleep(self.interval)

    def stop(self) -> float:
        self.stopped.set()
        self.join()
        return max(self.peak_mib, self.process.memory_info().rss / 2**20)


# ----------------------------------------------------------------------------------------------- data sets
def action_dataset(work: Path, frames: int, setting: str = "tiny") -> Path:
    from lerobot_roboalign.synthetic import write_synthetic_dataset

    root = work / f"action_{setting}_{frames}"
    write_synthetic_dataset(root, cameras=("front", "wrist"), image_hw=SETTINGS[setting]["action"], state_dim=6, action_dim=6,
                            num_episodes=frames // EPISODE_LENGTH or 1, episode_length=min(frames, EPISODE_LENGTH))
    return root


def vqa_file(work: Path, count: int, setting: str = "tiny") -> Path:
    """``count`` LLaVA records, each with its own PNG (a noisy colour gradient) and a two-turn conversation."""
    from PIL import Image

    path = work / f"vqa_{setting}_{count}.json"
    if path.exists():
        return path
    folder = f"vqa_images_{setting}"
    (work / folder).mkdir(parents=True, exist_ok=True)
    height, width = SETTINGS[setting]["vqa"]
    rng = np.random.default_rng(0)
    gradient = np.linspace(0, 200, width)[None, :, None] + np.linspace(0, 50, height)[:, None, None]
    records = []
    for i in range(count):
        name = f"{i:06d}.png"
        if not (work / folder / name).exists():
            pixels = gradient * rng.uniform(0.5, 1.0, 3) + rng.integers(0, 8, (height, width, 3))
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(work / folder / name)
        records.append({"id": i, "image": f"{folder}/{name}", "conversations": [
            {"from": "human", "value": f"<image>\nWhat colour is the square in picture {i}?"},
            {"from": "gpt", "value": f"It is colour number {i % 7}."}]})
    path.write_text(json.dumps(records))
    return path


def fast_tokenizer(work: Path) -> Path:
    from lerobot_roboalign.align.data import AlignDataConfig, load_samples
    from lerobot_roboalign.fast import FastTokenizer

    path = work / "fast"
    if not path.exists():
        samples = load_samples(AlignDataConfig(repo_ids=["local/synthetic"], roots=[str(action_dataset(work, 1000))],
                                               chunk_size=CHUNK))
        FastTokenizer.fit(np.stack([s["actions"] for s in samples]), vocab_size=256).save_pretrained(path)
    return path


# ----------------------------------------------------------------------------------------------- one measurement
def eager_module():
    """The eager ``align/data.py`` of ``EAGER_COMMIT``, imported from git."""
    source = subprocess.run(["git", "show", f"{EAGER_COMMIT}:lerobot_roboalign/align/data.py"], check=True,
                            capture_output=True, text=True, cwd=Path(__file__).parents[1]).stdout
    spec = importlib.util.spec_from_loader("eager_data", loader=None)
    module = importlib.util.module_from_spec(spec)
    exec(compile(source, "eager_data.py", "exec"), module.__dict__)
    return module


def eager_vqa_rows(path: Path, count: int, seed: int) -> list[dict]:
    """``vqa_rows`` / ``llava_row`` of ``EAGER_COMMIT``'s align/sft.py: every image opened up front."""
    from PIL import Image

    records = json.loads(path.read_text())
    order = np.random.default_rng(seed).permutation(len(records))
    rows = []
    for i in range(count):
        record = records[order[i % len(records)]]
        roles = {"human": "user", "gpt": "assistant"}
        turns = [{"role": roles[t["from"]], "content": t["value"].replace("<image>", "").strip()}
                 for t in record["conversations"]]
        images = [Image.open(path.parent / record["image"]).convert("RGB")]
        rows.append({"prompt": turns[:-1], "completion": turns[-1:], "images": images})
    return rows


def build_rows(kind: str, path: str, size: int, work: Path, eager: bool):
    """The SFT training dataset as ``align sft`` builds it: action rows (scripted reasoning) or VQA rows."""
    from datasets import Dataset

    from lerobot_roboalign.action_vocab import ActionVocabulary
    from lerobot_roboalign.align.data import AlignDataConfig, AlignSamples, sft_dataset
    from lerobot_roboalign.align.reason import ScriptedReasoning, describe_motion
    from lerobot_roboalign.align.vqa import VQAConfig, vqa_references
    from lerobot_roboalign.fast import FastTokenizer

    fast = FastTokenizer.from_pretrained(fast_tokenizer(work))
    vocabulary = ActionVocabulary(fast, start_id=0, end_id=1, action_ids=np.arange(2, 2 + fast.vocab_size))
    if kind == "vqa":
        if eager:
            return Dataset.from_list(eager_vqa_rows(Path(path), size, 0)).shuffle(seed=0)
        nothing = AlignSamples([], np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), None)
        return sft_dataset(nothing, [], vocabulary, vqa_references(VQAConfig(path=Path(path)), size, 0)).shuffle(seed=0)
    cfg = AlignDataConfig(repo_ids=["local/synthetic"], roots=[path], chunk_size=CHUNK)
    if eager:
        data = eager_module()
        samples = data.load_samples(cfg, fast)
        reasoning = ScriptedReasoning(describe_motion)(samples)
        rows = [{"prompt": data.align_messages(s["task"], s["state"]),
                 "completion": [{"role": "assistant",
                                 "content": data.answer_text(r, vocabulary.format_span(s["fast_tokens"]))}],
                 "images": s["images"]} for s, r in zip(samples, reasoning, strict=True)]
        return Dataset.from_list(rows).shuffle(seed=0)
    from lerobot_roboalign.align.data import load_samples
    from lerobot_roboalign.align.sft import AlignSFTConfig, build_dataset

    return build_dataset(AlignSFTConfig(dataset=cfg), load_samples(cfg, fast), vocabulary)


def measure(kind: str, path: str, size: int, work: Path, eager: bool, workers: int = 0) -> dict:
    """Prepare the rows, then read them all through a DataLoader as the trainer does (8 rows a batch, ``workers``
    processes decoding)."""
    import torch.utils.data

    import lerobot_roboalign.align.sft  # noqa: F401  (the imports of both paths, before the baseline)

    monitor = RSSMonitor()
    monitor.start()
    start = time.perf_counter()
    dataset = build_rows(kind, path, size, work, eager)
    prepared = time.perf_counter()
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, collate_fn=list, num_workers=workers)
    pixels = 0
    for batch in loader:
        pixels += sum(np.asarray(image).size for row in batch for image in row["images"])
    done = time.perf_counter()
    assert len(dataset) == size and pixels > 0
    work_peak = monitor.stop()
    return {"kind": kind, "path": "eager" if eager else "lazy", "samples": size, "workers": workers,
            "prepare_s": prepared - start, "decode_pass_s": done - prepared, "peak_rss_mib": peak_rss_mib(),
            "rss_after_imports_mib": monitor.start_mib, "data_peak_mib": work_peak - monitor.start_mib,
            "anon_peak_mib": monitor.anon_peak_mib, "data_anon_peak_mib": monitor.anon_peak_mib - monitor.anon_start_mib}


def run_child(kind: str, path: Path, size: int, work: Path, eager: bool, setting: str, workers: int = 0) -> dict:
    command = [sys.executable, __file__, "--child", kind, str(path), str(size), str(work), str(int(eager)), str(workers)]
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    row = {**json.loads(result.stdout.strip().splitlines()[-1]), "setting": setting}
    print(f"{setting:>6} {row['path']:>5} {kind:>6} {size:>6} w{workers}: peak RSS {row['peak_rss_mib']:6.0f} MiB, "
          f"anonymous {row['anon_peak_mib']:6.0f} MiB (data "
          f"{row['data_peak_mib']:6.1f} MiB), prepare {row['prepare_s']:6.1f} s, loader pass {row['decode_pass_s']:6.1f} s",
          flush=True)
    return row


# ----------------------------------------------------------------------------------------------- report
def rate(row: dict, key: str) -> float:
    return row["samples"] / max(row[key], 1e-9)


def pick(rows: list[dict], setting: str, kind: str, path: str, workers: int = 0) -> list[dict]:
    return sorted((r for r in rows if (r["setting"], r["kind"], r["path"], r.get("workers", 0))
                   == (setting, kind, path, workers)), key=lambda r: r["samples"])


def bytes_per_row(rows: list[dict], key: str = "peak_rss_mib", small: int = 10_000, large: int = 100_000) -> float | None:
    """Growth of ``key`` (a peak in MiB) from ``small`` to ``large`` rows, in bytes per added row."""
    sizes = {r["samples"]: r.get(key) for r in rows}
    if small not in sizes or large not in sizes:
        return None
    return (sizes[large] - sizes[small]) * 2**20 / (large - small)


def workers_speedup(rows: list[dict], setting: str, kind: str) -> dict | None:
    """Loader-pass samples/s with 0 and 2 workers at the same size."""
    none, two = pick(rows, setting, kind, "lazy", 0), pick(rows, setting, kind, "lazy", 2)
    if not two:
        return None
    base = next(r for r in none if r["samples"] == two[0]["samples"])
    return {"samples": base["samples"], "samples_per_s_0_workers": rate(base, "decode_pass_s"),
            "samples_per_s_2_workers": rate(two[0], "decode_pass_s"),
            "speedup": rate(two[0], "decode_pass_s") / rate(base, "decode_pass_s")}


def paper_hours(rows: list[dict], setting: str) -> dict:
    """Hours for 400K action + 1.88M VQA samples on 8 ranks, at the rates of the largest measured sizes.

    Preparation is repeated by every rank; the loader pass (decoding) is each rank's own 1/8 share, and the lazy
    path does it inside training (the eager one decoded everything in preparation, then reads PNGs back).
    """
    hours = {}
    for path in ("lazy", "eager"):
        action, vqa = pick(rows, setting, "action", path), pick(rows, setting, "vqa", path)
        if action and vqa:
            action, vqa = action[-1], vqa[-1]
            every_rank = PAPER["action"] / rate(action, "prepare_s") + PAPER["vqa"] / rate(vqa, "prepare_s")
            shared = PAPER["action"] / rate(action, "decode_pass_s") + PAPER["vqa"] / rate(vqa, "decode_pass_s")
            hours[path] = {"prepare_every_rank_h": every_rank / 3600, "loader_pass_own_share_h": shared / PAPER["ranks"] / 3600,
                           "rates_from_sizes": {"action": action["samples"], "vqa": vqa["samples"]}}
    return hours


def summarise(rows: list[dict]) -> dict:
    """Memory growth of the lazy path over sizes, and eager / lazy ratios where both ran."""
    summary = {}
    for setting in SETTINGS:
        for kind in ("action", "vqa"):
            lazy = pick(rows, setting, kind, "lazy")
            if not lazy:
                continue
            entry = {"sizes": [r["samples"] for r in lazy],
                     "peak_rss_growth_smallest_to_largest": lazy[-1]["peak_rss_mib"] / lazy[0]["peak_rss_mib"] - 1,
                     "data_peak_mib": [round(r["data_peak_mib"], 1) for r in lazy],
                     "samples_per_s_prepare": [round(rate(r, "prepare_s")) for r in lazy],
                     "samples_per_s_loader_pass": [round(rate(r, "decode_pass_s")) for r in lazy],
                     "peak_rss_bytes_per_row_10k_to_100k": bytes_per_row(lazy),
                     "peak_anon_rss_bytes_per_row_10k_to_100k": bytes_per_row(lazy, "anon_peak_mib"),
                     "loader_workers_0_vs_2": workers_speedup(rows, setting, kind)}
            for old in pick(rows, setting, kind, "eager"):
                new = next(r for r in lazy if r["samples"] == old["samples"])
                entry[f"eager_over_lazy_at_{old['samples']}"] = {
                    "peak_rss": old["peak_rss_mib"] / new["peak_rss_mib"],
                    "data_peak_mib": [round(old["data_peak_mib"], 1), round(new["data_peak_mib"], 1)],
                    "prepare_time": old["prepare_s"] / new["prepare_s"],
                    "prepare_plus_loader_pass_time": (old["prepare_s"] + old["decode_pass_s"])
                    / (new["prepare_s"] + new["decode_pass_s"]),
                }
            summary[f"{setting}/{kind}"] = entry
    return summary


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (process, memory, speed, loader) = plt.subplots(1, 4, figsize=(21, 4.5))
    colours = {("tiny", "action"): "tab:blue", ("tiny", "vqa"): "tab:orange",
               ("camera", "action"): "tab:green", ("camera", "vqa"): "tab:red"}
    for (setting, kind), colour in colours.items():
        for path_name, marker in (("lazy", "o"), ("eager", "x")):
            points = pick(rows, setting, kind, path_name)
            if not points:
                continue
            sizes = [r["samples"] for r in points]
            label = f"{kind}, {setting} frames, {path_name}" + (" (peer)" if path_name == "eager" else "")
            style = dict(marker=marker, linestyle="-" if path_name == "lazy" else "none", color=colour, label=label,
                         markersize=9)
            process.plot(sizes, [r["peak_rss_mib"] for r in points], **style)
            memory.plot(sizes, [r["data_peak_mib"] for r in points], **style)
            speed.plot(sizes, [rate(r, "prepare_s") for r in points], **style)
    process.set(xscale="log", xlabel="samples", ylabel="MiB", ylim=(0, None),
                title="Peak RSS of the process (ru_maxrss, imports included)")
    memory.set(xscale="log", yscale="log", xlabel="samples", ylabel="MiB",
               title="Memory of the data (polled peak above the imports)")
    speed.set(xscale="log", yscale="log", xlabel="samples", ylabel="samples / s",
              title="Preparation every rank repeats (1 process)")
    labels, values = [], []
    for kind in ("action", "vqa"):
        for workers in (0, 2):
            points = pick(rows, "camera", kind, "lazy", workers)
            if points:
                labels.append(f"{kind}\n{workers} workers")
                values.append(rate(points[0], "decode_pass_s"))
    loader.bar(labels, values, color=["tab:green", "tab:olive", "tab:red", "tab:pink"][: len(values)])
    loader.set(ylabel="samples / s", title="Data loader pass, camera-size frames")
    for axis in (process, memory, speed):
        axis.legend(fontsize=7)
    fig.suptitle("Alignment data: lazy (lines) against the eager peer (x, 1K samples only)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--action_sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--vqa_sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--peer_size", type=int, default=1000, help="the size the eager peer runs at (tiny frames)")
    parser.add_argument("--camera_peer", action="store_true", help="also run the eager peer on camera-size frames")
    parser.add_argument("--workers_size", type=int, default=1000, help="camera-size rows read with 0 and 2 workers")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_align_data"))
    parser.add_argument("--output", type=Path, default=RESULTS / "bench_align_data")
    parser.add_argument("--plot_only", action="store_true", help="redraw the PNG from the JSON of a previous run")
    args = parser.parse_args()
    if args.plot_only:
        plot(json.loads(args.output.with_suffix(".json").read_text())["rows"], args.output.with_suffix(".png"))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    plan = [("tiny", kind, size, eager, 0) for kind, sizes in (("action", args.action_sizes), ("vqa", args.vqa_sizes))
            for size in sizes for eager in (False, True) if not eager or size == args.peer_size]
    plan += [("camera", kind, args.workers_size, False, workers) for kind in ("action", "vqa") for workers in (0, 2)]
    if args.camera_peer:
        plan += [("camera", kind, args.workers_size, True, 0) for kind in ("action", "vqa")]
    # The data are written by a child too: Linux keeps ru_maxrss across fork + exec, so this process stays small.
    subprocess.run([sys.executable, __file__, "--write", str(args.work), json.dumps(plan)], check=True)
    rows = []
    for setting, kind, size, eager, workers in plan:
        path = data_path(args.work, kind, size, setting)
        rows.append(run_child(kind, path, size, args.work, eager, setting, workers))
    result = {"rows": rows, "summary": summarise(rows),
              "paper_hours": {setting: paper_hours(rows, setting) for setting in SETTINGS},
              "paper": PAPER, "settings": SETTINGS, "cameras": 2, "eager_commit": EAGER_COMMIT}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.with_suffix(".json").write_text(json.dumps(result, indent=2))
    plot(rows, args.output.with_suffix(".png"))
    print(json.dumps({"summary": result["summary"], "paper_hours": result["paper_hours"]}, indent=2))


def data_path(work: Path, kind: str, size: int, setting: str) -> Path:
    return work / (f"action_{setting}_{size}" if kind == "action" else f"vqa_{setting}_{size}.json")


def write_data(work: Path, plan: list) -> None:
    fast_tokenizer(work)
    for setting, kind, size, *_ in plan:
        action_dataset(work, size, setting) if kind == "action" else vqa_file(work, size, setting)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, path, size, work, eager, workers = sys.argv[2:8]
        print(json.dumps(measure(kind, path, int(size), Path(work), bool(int(eager)), int(workers))))
    elif len(sys.argv) > 1 and sys.argv[1] == "--write":
        write_data(Path(sys.argv[2]), json.loads(sys.argv[3]))
    else:
        main()
