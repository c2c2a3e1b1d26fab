"""VQA metadata streamed: LLaVA's JSON list parsed a record at a time (or JSONL), rows memory-mapped, not held."""

import json
import tracemalloc

import pytest

from lerobot_roboalign.align import vqa
from lerobot_roboalign.align.vqa import VQAConfig, iter_records, vqa_references


def llava_records(count: int, words: int = 0) -> list[dict]:
    return [{"id": i, "image": "a.png" if i % 3 else ["a.png", "b.png"], "conversations": [
        {"from": "human", "value": f"<image>\nWhat is in picture {i}? " + "words " * (words + i % 17)},
        {"from": "gpt", "value": f"A cube, [{i}] \"quoted\" {{braces}}."}]} for i in range(count)]


@pytest.fixture
def files(tmp_path):
    from PIL import Image

    for name in ("a.png", "b.png"):
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    records = llava_records(50)
    (tmp_path / "vqa.json").write_text(json.dumps(records, indent=1))
    (tmp_path / "vqa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return records, tmp_path


def test_a_json_list_is_parsed_a_record_at_a_time(files, monkeypatch):
    records, folder = files
    monkeypatch.setattr(vqa, "CHUNK_CHARS", 37)  # records cut across every read
    assert list(iter_records(folder / "vqa.json")) == records
    assert list(iter_records(folder / "vqa.jsonl")) == records


def test_bad_files_name_the_problem(tmp_path):
    (tmp_path / "cut.json").write_text(json.dumps(llava_records(3))[:-40])
    with pytest.raises(ValueError, match="truncated JSON list"):
        list(iter_records(tmp_path / "cut.json"))
    (tmp_path / "object.json").write_text(json.dumps({"conversations": []}))
    with pytest.raises(ValueError, match="not a JSON list"):
        list(iter_records(tmp_path / "object.json"))


def test_json_and_jsonl_give_the_same_rows_in_the_same_order(files):
    _, folder = files
    rows = [vqa_references(VQAConfig(path=folder / name), 70, seed=3) for name in ("vqa.json", "vqa.jsonl")]
    assert len(rows[0]) == 70 and rows[0].to_list() == rows[1].to_list()
    assert rows[0][0]["vqa_completion"][0]["content"].startswith("A cube")


def test_memory_stays_flat_as_the_file_grows(tmp_path, monkeypatch):
    """Python's peak allocation while drawing every record of a 1K and a 10K file of ~1 KB records (LLaVA's size):
    what grows is the drawn rows' indices, a few bytes a row (json.loads of the whole file would hold every record
    as Python objects, several times the file's size). The read chunk is made small, so that both files span many
    chunks (its 1M characters are a constant of the same kind)."""
    from PIL import Image

    monkeypatch.setattr(vqa, "CHUNK_CHARS", 4096)

    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    peaks, sizes = [], []
    for count in (1_000, 1_000, 10_000):  # the first call pays one-off allocations (imports, caches)
        path = tmp_path / f"vqa{count}.json"
        path.write_text(json.dumps([{**r, "image": "a.png"} for r in llava_records(count, words=150)]))
        tracemalloc.start()
        assert len(vqa_references(VQAConfig(path=path), count, seed=0)) == count
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        sizes.append(path.stat().st_size)
    assert peaks[2] - peaks[1] < 0.25 * (sizes[2] - sizes[1]), f"peaks {peaks} for files of {sizes} bytes"
