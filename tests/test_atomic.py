import pytest

from medseg.atomic import atomic_target, write_text_atomic


def test_write_replaces_the_file_whole(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")
    write_text_atomic(target, "new")
    assert target.read_text() == "new" and list(tmp_path.iterdir()) == [target]


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "case.nii.gz"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_target(target) as temp:
        assert temp.name.endswith(".nii.gz") and temp.parent == tmp_path
        temp.write_text("half")
        raise RuntimeError("killed half way")
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]
