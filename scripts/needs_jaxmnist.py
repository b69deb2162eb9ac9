"""Imported first by every script: where jaxmnist, or what it imports, is missing, one line and exit 2 instead of
a traceback. A bare checkout (the GPU scripts) sets PYTHONPATH instead of installing."""

import importlib
import sys

try:
    for _module in ("jaxmnist.cli", "jaxmnist.data", "jaxmnist.presets", "jaxmnist.runlog"):
        importlib.import_module(_module)
except ModuleNotFoundError as e:
    print(f"error: cannot import {e.name}: `pip install -e .` (or `make test` once), or PYTHONPATH=.", file=sys.stderr)
    sys.exit(2)
