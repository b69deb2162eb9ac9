"""The package's shape: rooms of one job (sizes, no import circle, the torch-free library), installed commands,
one flag name for a PyTorch state_dict across the commands."""

import ast
import importlib
import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from jaxmnist import evaluate, export, predict, serve, train

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "jaxmnist"
MAX_MODULE_LINES = 420  # "about 400"
MAX_FUNCTION_LINES = 60


def imports_of(path: Path) -> set[str]:
    """The jaxmnist modules a module imports (at any depth of its body)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jaxmnist"):
            if node.module == "jaxmnist":
                names |= {a.name for a in node.names}
            else:
                names.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            names |= {a.name.split(".")[1] for a in node.names if a.name.startswith("jaxmnist.")}
    return names


def test_no_import_circle_and_no_torch_in_the_library():
    graph = {p.stem: imports_of(p) - {p.stem} for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    state = {}

    def visit(module, path):
        state[module] = "open"
        for dep in sorted(graph.get(module, ())):
            assert state.get(dep) != "open", f"import circle: {' -> '.join([*path, dep])}"
            if dep not in state:
                visit(dep, [*path, dep])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    for p in PACKAGE.glob("*.py"):
        tree = ast.parse(p.read_text())
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not {m for m in imported if m.split(".")[0] in ("torch", "torchvision")}, f"{p.name} imports torch"


def test_rooms_are_small():
    for p in PACKAGE.glob("*.py"):
        source = p.read_text()
        assert len(source.splitlines()) <= MAX_MODULE_LINES, f"{p.name}: {len(source.splitlines())} lines"
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                assert length <= MAX_FUNCTION_LINES, f"{p.name}:{node.lineno} {node.name}: {length} lines"


def test_installed_commands_are_the_modules_mains():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    installed = {e.name: e for e in importlib.metadata.entry_points(group="console_scripts")}
    for name, target in scripts.items():
        assert name in installed, f"{name} is not installed (pip install -e . again)"
        module, function = target.split(":")
        assert installed[name].load() is getattr(importlib.import_module(module), function)
    command = Path(sys.executable).parent / "jaxmnist-train"
    run = subprocess.run([str(command), "--help"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "--torch-state-dict" in run.stdout and "--no-compile-cache" in run.stdout


@pytest.mark.parametrize("module", [train, predict, evaluate, export, serve])
def test_one_flag_names_a_torch_state_dict(module, capsys):
    with pytest.raises(SystemExit):
        module.build_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    assert "--torch-state-dict" in text and "--no-compile-cache" in text
    images = ["digit.png"] if module is predict else []
    old = "--to" if module is export else "--init-from"  # the old spelling, kept as an alias
    dest = "to" if module is export else "torch_state_dict"
    for flag in ("--torch-state-dict", old):
        got = getattr(module.build_parser().parse_known_args([*images, flag, "x.pth"])[0], dest)
        assert got == (["x.pth"] if module in (predict, evaluate, serve) else "x.pth")  # those take an ensemble
