"""The layering of ARCHITECTURE.md, checked on the package source.

- Imports point down: nothing under the library sub-packages imports the entry points
  (``dinov2.train``, ``dinov2.run``).
- One checkpoint reader: ``torch.load(`` appears in dinov2/checkpoint/io.py only.
- Small modules: every module of dinov2/ has at most 500 lines, the trainer at most 400.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dinov2"
LIBRARY = ("eval", "data", "models", "layers", "loss", "utils", "fsdp", "distributed", "logging")
ENTRY_POINTS = ("dinov2.train", "dinov2.run")
CHECKPOINT_MODULE = PACKAGE / "checkpoint" / "io.py"
MAX_LINES = 500
MAX_TRAINER_LINES = 400


def _modules(*subpackages):
    roots = [PACKAGE / name for name in subpackages] if subpackages else [PACKAGE]
    files = sorted(path for root in roots for path in root.rglob("*.py"))
    assert files, f"no modules under {roots}"
    return files


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)


def _imported_modules(source: str, module: str):
    """(line, absolute name) of every module and name that ``source`` (the module ``module``) imports."""
    package = module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package[: len(package) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            yield node.lineno, base
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"


def _is_entry_point(name: str) -> bool:
    return any(name == e or name.startswith(e + ".") for e in ENTRY_POINTS)


@pytest.mark.parametrize(
    "source",
    [
        "import dinov2.train.train",
        "from dinov2.run import submit",
        "from dinov2 import train",
        "from ..train.optim import build_optimizer",
        "def f():\n    from dinov2.train.train import main",
    ],
)
def test_the_import_scan_catches_every_spelling_of_an_upward_import(source):
    names = [name for _, name in _imported_modules(source, "dinov2.eval.module")]
    assert any(_is_entry_point(name) for name in names), names


def test_the_import_scan_lets_downward_imports_pass():
    source = "import torch\nfrom dinov2.checkpoint import load_torch_file\nfrom . import hashing\nfrom .metrics import x"
    assert not [n for _, n in _imported_modules(source, "dinov2.eval.module") if _is_entry_point(n)]


@pytest.mark.parametrize("subpackage", LIBRARY)
def test_library_packages_do_not_import_the_entry_points(subpackage):
    upward = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: {name}"
        for path in _modules(subpackage)
        for line, name in _imported_modules(path.read_text(), _module_name(path))
        if _is_entry_point(name)
    ]
    assert not upward, "imports pointing up, from a library package into an entry point:\n" + "\n".join(upward)


def test_torch_load_appears_only_in_the_checkpoint_module():
    sites = [
        f"{path.relative_to(PACKAGE.parent)}:{number}"
        for path in _modules()
        if path != CHECKPOINT_MODULE
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "torch.load(" in line
    ]
    assert not sites, "torch.load( outside dinov2/checkpoint/io.py: " + ", ".join(sites)
    assert "torch.load(" in CHECKPOINT_MODULE.read_text()


def test_modules_are_small():
    sizes = {path: len(path.read_text().splitlines()) for path in _modules()}
    too_long = [f"{p.relative_to(PACKAGE.parent)}: {n} lines" for p, n in sizes.items() if n > MAX_LINES]
    assert not too_long, f"modules over {MAX_LINES} lines: " + ", ".join(too_long)
    trainer = PACKAGE / "train" / "train.py"
    assert sizes[trainer] <= MAX_TRAINER_LINES, f"dinov2/train/train.py has {sizes[trainer]} lines"
