"""tfmf.tables: the one table formatter (text and Markdown)."""
from tfmf.tables import format_cell, format_table


def test_text_table_aligns_labels_left_numbers_right():
    rows = [{"model": "mf", "rmse": 0.91234, "n": 3}, {"model": "biased_mf", "rmse": 0.9}]
    lines = format_table(rows, float_format=".3f").splitlines()
    assert lines[0].split() == ["model", "rmse", "n"]
    assert lines[2].startswith("mf        ") and lines[2].split() == ["mf", "0.912", "3"]
    assert lines[3].split() == ["biased_mf", "0.900", "-"]  # missing key
    assert len({len(line) for line in lines}) == 1  # every line padded to the same width


def test_markdown_columns_and_per_column_formats():
    rows = [{"a": 1.23456, "b": 2.5}]
    md = format_table(rows, markdown=True, columns=["b", "a"], formats={"a": ".2f"})
    assert md.splitlines() == ["| b | a |", "| --- | --- |", "| 2.5 | 1.23 |"]
    assert format_table([]) == "(no rows)"


def test_cells():
    assert format_cell(None) == "-" and format_cell(float("inf")) == "inf"
    assert format_cell(float("nan")) == "nan" and format_cell(0.123456) == "0.1235"
