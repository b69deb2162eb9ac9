"""Imported first by every script: where jaxmnist, or what it imports, is missing, one line and exit 2 instead of
a traceback. A bare checkout (the GPU scripts) sets PYTHONPATH instead of installing."""

import importlib
import sys
from pathlib import Path

try:
    from jaxmnist import malloc

    # Run as a script (not imported by a test), before jax and torch load, as jaxmnist's own commands do: with
    # $JAXMNIST_HUGEPAGES=1 restart once with huge pages (jaxmnist/hugepages.py); keep freed memory for the next
    # step unless $JAXMNIST_MALLOC=system (jaxmnist/malloc.py).
    if Path(sys.argv[0]).resolve().parent == Path(__file__).resolve().parent:
        malloc.start_command()
    for _module in ("jaxmnist.cli", "jaxmnist.data", "jaxmnist.presets", "jaxmnist.runlog"):
        importlib.import_module(_module)
except ModuleNotFoundError as e:
    print(f"error: cannot import {e.name}: `pip install -e .` (or `make test` once), or PYTHONPATH=.", file=sys.stderr)
    sys.exit(2)
