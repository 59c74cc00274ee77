"""Text tables line up their columns under right-aligned titles."""

from medseg.tables import format_rows


def test_rows_format_as_an_aligned_table():
    text = format_rows([{"case": "a", "ml": 1.5}, {"case": "long_name", "ml": 10.25}])
    assert text.splitlines() == ["     case     ml", "        a    1.5", "long_name  10.25"]


def test_no_rows_format_as_nothing():
    assert format_rows([]) == ""
