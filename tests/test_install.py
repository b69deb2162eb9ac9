"""scripts/install.py: pip's settings handed to uv, and pip itself when uv fails. No network: the commands it would
run are recorded, not run."""

import subprocess
import sys

import install
import pytest

CONFIG = """global.cert='/etc/ssl/certs/ca-certificates.crt'
global.constraint='/etc/xdg/pip/constraints.txt'
global.extra-index-url='file:///opt/pypi/simple file:///nowhere/simple https://mirror.example/simple'
global.find-links='/opt/wheels'
install.find-links='/not/this'
:env:.find-links='{links}'
:env:.default-timeout='180'
"""


class Recorder:
    """subprocess.run's stand-in: answers `pip config list` with CONFIG, records the rest, fails uv on request."""

    def __init__(self, links, uv_fails=False):
        self.config, self.uv_fails, self.calls = CONFIG.format(links=links), uv_fails, []

    def __call__(self, argv, **kw):
        self.calls.append((argv, kw))
        if argv[-2:] == ["config", "list"]:
            return subprocess.CompletedProcess(argv, 0, stdout=self.config, stderr="")
        if self.uv_fails and argv[1:3] == ["-m", "uv"]:
            raise subprocess.CalledProcessError(2, argv)
        return subprocess.CompletedProcess(argv, 0)


@pytest.fixture
def paths(tmp_path, monkeypatch):
    """/opt/pypi/simple and /opt/wheels as if they existed; nothing else local does."""
    real = {"/opt/pypi/simple", "/opt/wheels", str(tmp_path)}
    monkeypatch.setattr(install.os.path, "exists", lambda p: p in real)
    return tmp_path


def test_uv_gets_pips_indexes_links_constraints_and_ca_bundle(paths, monkeypatch):
    run = Recorder(links=str(paths))
    monkeypatch.setattr(install.subprocess, "run", run)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    assert install.main(["-e", ".[dev]"]) == 0
    argv, kw = run.calls[-1]
    assert argv[:4] == [sys.executable, "-m", "uv", "pip"] and argv[-2:] == ["-e", ".[dev]"]
    pairs = list(zip(argv, argv[1:]))
    # The environment's find-links wins over pip.conf's; the missing file:// index is left out, as pip ignores it.
    assert ("--find-links", str(paths)) in pairs and ("--find-links", "/opt/wheels") not in pairs
    assert ("--extra-index-url", "file:///opt/pypi/simple") in pairs
    assert ("--extra-index-url", "https://mirror.example/simple") in pairs
    assert not any("nowhere" in a for a in argv)
    assert ("--constraint", "/etc/xdg/pip/constraints.txt") in pairs  # the machine's torch cap holds under uv
    assert ("--index-strategy", "unsafe-best-match") in pairs  # the best version over all indexes, as pip takes
    assert kw["env"]["SSL_CERT_FILE"] == "/etc/ssl/certs/ca-certificates.crt"


def test_a_failing_uv_falls_back_to_pip_with_the_same_arguments(paths, monkeypatch, capsys):
    run = Recorder(links=str(paths), uv_fails=True)
    monkeypatch.setattr(install.subprocess, "run", run)
    assert install.main(["-e", "."]) == 0
    argv, _ = run.calls[-1]
    assert argv[:3] == [sys.executable, "-m", "pip"] and argv[-5:] == ["install", "-q", "--no-compile", "-e", "."]
    assert "installing with pip" in capsys.readouterr().err
