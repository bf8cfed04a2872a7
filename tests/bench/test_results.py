"""docs/results.md and the README's headline table are what bench/results.py makes of the raw results."""

import json

import pytest
import results  # bench/results.py (bench/ is on the test path)


def test_results_page_and_readme_table_equal_what_the_raw_json_gives():
    assert results.main(["--check"]) == 0, "run: python bench/results.py"


def test_readme_ratio_against_the_peer_is_the_one_throughput_py_computed():
    """An independent read of one headline figure: bench/throughput.py's own ``comparisons``."""
    folder = results.latest("throughput_vs_peer")
    merged = [json.loads(p.read_text()) for p in folder.glob("*.json")]
    merged = [r for r in merged if r.get("benchmark") == "throughput" and "merged_from" in r]
    comparison = next(c for r in merged for c in r["comparisons"]
                      if c["shape"] == "gpt-1.3b" and c["sp"] == 2 and c["seq_len"] == 32768)  # fmt: skip
    readme = results.README.read_text()
    row = next(line for line in readme.splitlines() if "GPT-1.3B, 2 x H200, SP=2" in line and "at 32k" in line)
    assert f"{comparison['ratio_tokens_per_sec']:.2f}x at 32k" in row


def test_each_section_reads_the_newest_folder_of_its_topic(tmp_path, monkeypatch):
    for name in ("2026-11-30_tiled_loss_h200", "2026-12-24_tiled_loss_h100", "2026-12-01_tiled_loss_fused_h200"):
        (tmp_path / name).mkdir()
    monkeypatch.setattr(results, "RESULTS", tmp_path)
    assert results.latest("tiled_loss").name == "2026-12-24_tiled_loss_h100"
    with pytest.raises(FileNotFoundError):
        results.latest("attention_kernels")
