"""Text tables line up their columns under right-aligned titles; Markdown tables keep one row per line."""

from medseg.tables import format_rows, markdown_rows


def test_rows_format_as_an_aligned_table():
    text = format_rows([{"case": "a", "ml": 1.5}, {"case": "long_name", "ml": 10.25}])
    assert text.splitlines() == ["     case     ml", "        a    1.5", "long_name  10.25"]


def test_rows_format_as_a_markdown_table():
    text = markdown_rows([{"case": "a", "ml": 1.5}, {"case": "long_name", "ml": 10.25}])
    assert text.splitlines() == ["| case | ml |", "|---|---|", "| a | 1.5 |", "| long_name | 10.25 |"]


def test_no_rows_format_as_nothing():
    assert format_rows([]) == "" and markdown_rows([]) == ""
