"""`python scripts/install.py ARGS...`: `pip install --no-compile ARGS` into this Python's environment, done by uv
where it can be, else by pip (the Makefile's install step).

Why: pip unpacks wheels one after another; uv installs the same versions in parallel. A fresh `.venv` with
`-e '.[dev]'` (`make .venv/.installed-dev`, uv's cache empty) took 66 s with pip and 34 s this way on 2 vCPUs of an
AMD EPYC (family 25 model 17, Zen 4; the same `pip freeze` both ways but for uv itself): about 30 s of every
clean-clone `make test`.

uv reads none of pip's configuration, so pip's own settings (`pip config list`: pip.conf files and PIP_*
variables) are passed to it: find-links, index URLs (a `file://` index that does not exist is left out, as pip
ignores it), constraints and the CA bundle; uv's `unsafe-best-match` takes the best version over all indexes, as
pip does. Anything that fails on uv's side (no uv to be had, an option it does not know, a resolution error) falls
back to pip with the same arguments, so the install never does less than pip's. uv keeps what it downloaded in
its own cache (~/.cache/uv: about 6 GB after the dev install, torch's CUDA libraries; `python -m uv cache clean`
empties it), as pip does in ~/.cache/pip.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from urllib.parse import urlparse

PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
# pip's option -> uv's; each pip value may hold several, space-separated.
OPTIONS = {"find-links": "--find-links", "index-url": "--index-url", "extra-index-url": "--extra-index-url",
           "constraint": "--constraint"}  # fmt: skip


def pip_config() -> dict[str, str]:
    """pip's effective settings, `pip config list` read as {name: value}; environment variables last (they win)."""
    out = subprocess.run([*PIP, "config", "list"], capture_output=True, text=True).stdout  # not -q: it prints nothing
    found: dict[str, tuple[int, str]] = {}
    for line in out.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        scope, _, name = key.rpartition(".")
        rank = 2 if scope == ":env:" else 1 if scope == "global" else 0  # install/other sections: lowest
        if name not in found or rank >= found[name][0]:
            found[name] = (rank, value.strip().strip("'\""))
    return {name: value for name, (_, value) in found.items()}


def reachable(location: str) -> bool:
    """False only for a local index or directory that is not there (pip warns and goes on; uv would fail)."""
    url = urlparse(location)
    if url.scheme in ("", "file"):
        return os.path.exists(url.path if url.scheme else location)
    return True


def uv_command(config: dict[str, str], args: list[str]) -> tuple[list[str], dict[str, str]]:
    """The `uv pip install` equivalent of `pip install --no-compile args` under pip's config; (argv, env)."""
    argv = [sys.executable, "-m", "uv", "pip", "install", "-q", "--python", sys.executable, "--index-strategy",
            "unsafe-best-match"]  # fmt: skip
    for name, flag in OPTIONS.items():
        for value in shlex.split(config.get(name, "")):
            if flag == "--constraint" or reachable(value):  # a missing constraints file fails pip too
                argv += [flag, value]
    env = dict(os.environ)
    if config.get("cert"):
        env.setdefault("SSL_CERT_FILE", config["cert"])
    return [*argv, *args], env


def main(args: list[str]) -> int:
    try:
        subprocess.run([*PIP, "install", "-q", "uv"], check=True)
        argv, env = uv_command(pip_config(), args)
        subprocess.run(argv, check=True, env=env)
        return 0
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"install: uv did not install ({e}); installing with pip", file=sys.stderr)
    return subprocess.run([*PIP, "install", "-q", "--no-compile", *args]).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
