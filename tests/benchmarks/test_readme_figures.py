"""The README's benchmark figures are those of benchmarks/results/*.json (benchmarks/readme_figures.py)."""

import copy
import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("readme_figures", REPO / "benchmarks" / "readme_figures.py")
figures = importlib.util.module_from_spec(spec)
spec.loader.exec_module(figures)


def test_readme_figures_agree_with_the_benchmark_json():
    readme = (REPO / "README.md").read_text()
    stale = figures.stale_blocks(readme, figures.render(figures.load_results()))
    assert not stale, (
        f"README.md figures differ from benchmarks/results for {stale}: run "
        "`python benchmarks/readme_figures.py` and commit README.md"
    )


def test_a_changed_result_makes_the_readme_stale():
    """The check can fail: the control-loop p99 that once disagreed (64.0 in one table, 51.1 in the other)."""
    results = figures.load_results()
    readme = (REPO / "README.md").read_text()
    changed = copy.deepcopy(results)
    changed["control_loop"]["roboalign_sync_0ms"]["period_p99_ms"] = 64.0
    stale = figures.stale_blocks(readme, figures.render(changed))
    assert stale == ["benchmarks", "control-loop"]
    assert "| same, p99 control period | 64.0 ms |" in figures.render(changed)["benchmarks"]


def test_rewrite_puts_the_figures_between_the_markers():
    blocks = figures.render(figures.load_results())
    readme = "".join(f"text\n<!-- figures:{name} -->\nold\n<!-- /figures:{name} -->\n" for name in blocks)
    rewritten = figures.rewrite(readme, blocks)
    assert figures.stale_blocks(rewritten, blocks) == [] and "old" not in rewritten


def test_the_rtc_reading_names_the_columns_where_smolvla_rtc_does_better():
    loops = copy.deepcopy(figures.load_results()["control_loop"])
    for name, row in loops.items():
        if name.startswith("smolvla_rtc_"):  # SmolVLA RTC worse than RoboAlign RTC everywhere
            row.update({key: (0.0 if higher else 1e3) for _, key, _, higher in figures.RTC_COLUMNS})
    assert figures.rtc_reading(loops).endswith("as good or better on every column.\n")
    loops["smolvla_rtc_100ms"]["boundary_ratio"] = 0.5
    ours = loops["roboalign_rtc_100ms"]["boundary_ratio"]
    assert figures.rtc_reading(loops).endswith(
        f"on every column but the boundary ratio at +100 ms ({ours:.2f} against 0.50).\n"
    )
