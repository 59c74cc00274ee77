"""The planning command's writes: a folder it cannot write is one line, not a traceback."""

from medseg import plan
from tests.helpers.faults import read_only


def test_a_read_only_out_folder_is_one_line_naming_the_file(demo_root, tmp_path, monkeypatch, capsys):
    out = tmp_path / "plan"
    read_only(monkeypatch, out)
    code = plan.main([f"--data.root={demo_root}", "--capacity_gib", "8", "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == f"medseg: error: cannot write {out / 'plan.json'}: Read-only file system: choose a folder you can write to (or fix its permissions) and rerun (nothing there was changed)"
