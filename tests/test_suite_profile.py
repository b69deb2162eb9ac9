"""scripts/suite_profile.py: the summary of made-up records (no suite run): busy and idle time per worker, compile
seconds per file; a directory without records is one line and exit 2."""

import json

import suite_profile


def row(test, start, end, compiles=0, compile_s=0.0, trace_s=0.0):
    return {"test": test, "start": start, "end": end, "compiles": compiles, "compile_s": compile_s, "trace_s": trace_s}


def test_summary_adds_busy_idle_and_compile_time():
    gw0 = {"worker": "gw0", "started": 100.0, "rows": [
        {"test": "<collected>", "start": 110.0, "end": 110.0},
        row("tests/test_a.py::one", 110.0, 114.0, 3, 2.5, 0.5),
        row("tests/test_b.py::two", 115.0, 120.0, 1, 1.0),  # 1 s idle before it
    ]}  # fmt: skip
    gw1 = {"worker": "gw1", "started": 101.0, "rows": [row("tests/test_a.py::three", 111.0, 113.0, 2, 0.5)]}
    text = suite_profile.summary([gw0, gw1])
    assert "gw0: collected after 10.0 s, 2 tests, busy 9.0 s, idle 1.0 s, last test ended at 20.0 s" in text
    assert "all: 11.0 s of tests, XLA compiling 4.0 s (6 programs), tracing and lowering 0.5 s" in text
    assert "  tests/test_a.py: 6.0, 3.0 (5), 0.5" in text
    assert text.index("tests/test_a.py::one: 2.5 (3)") < text.index("tests/test_b.py::two: 1.0 (1)")


def test_main_reads_a_directory_and_refuses_an_empty_one(tmp_path, capsys):
    assert suite_profile.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no records in") and err.count("\n") == 1
    (tmp_path / "gw0.json").write_text(json.dumps({"worker": "gw0", "started": 0.0, "rows": [row("t.py::x", 1, 2)]}))
    assert suite_profile.main([str(tmp_path)]) == 0
    assert "gw0: collected after 0.0 s, 1 tests" in capsys.readouterr().out
    (tmp_path / "gw1.json").write_text("{not json")
    assert suite_profile.main([str(tmp_path)]) == 2
