"""scripts/parallel_overhead.py: its refusals and how a failed layout is reported (no training)."""

import parallel_overhead


def test_bad_input_is_one_line_and_exit_2(capsys):
    assert parallel_overhead.main(["--devices", "1"]) == 2
    assert capsys.readouterr().err.strip() == "error: --devices must be >= 2, got 1"
    assert parallel_overhead.main(["--preset", "nope"]) == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err


def test_a_failed_layout_ends_the_run_with_its_last_line(tmp_path, monkeypatch, capsys):
    class Failed:
        returncode = 1

        def communicate(self, timeout=None):
            return None, "Traceback...\nerror: --devices 2: this run sees 1 device(s) (cpu)\n"

    monkeypatch.setattr(parallel_overhead, "launch", lambda *a, **k: Failed())
    assert parallel_overhead.main(["--out", str(tmp_path / "x.json")]) == 1
    assert capsys.readouterr().err.strip() == "error: 1 device: error: --devices 2: this run sees 1 device(s) (cpu)"
    assert not (tmp_path / "x.json").exists()
