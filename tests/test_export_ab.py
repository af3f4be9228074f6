"""``bench/export_ab.py``: exports of one model decoded on the same sentences, by the real engine."""

from __future__ import annotations

import pytest

from nmtserve.bench.export_ab import compare
from nmtserve.export.testing import tiny_export


def test_an_export_agrees_with_itself_and_an_int8_copy_is_measured(tmp_path_factory: pytest.TempPathFactory) -> None:
    base = tmp_path_factory.getbasetemp() / "tiny-model"
    fp32, int8 = tiny_export(base, "fp32"), tiny_export(base, "int8")
    source = tmp_path_factory.mktemp("ab") / "source.txt"
    source.write_text("a b c\n\nd e f g\nh i\n", encoding="utf-8")
    rows = compare([fp32, fp32, int8], source, beam_size=2, repeats=1)
    assert [row["sentences"] for row in rows] == [3, 3, 3]  # the blank line is skipped
    assert rows[0]["same_as_first"] == rows[1]["same_as_first"] == 3
    assert all(row["cpu_s"] > 0 and row["tokens_per_cpu_s"] > 0 for row in rows)
    assert rows[2]["model"] == str(int8) and 0 <= rows[2]["same_as_first"] <= 3
