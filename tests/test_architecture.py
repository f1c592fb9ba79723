"""The design of ARCHITECTURE.md, checked on the package source.

- Imports point down: a library package imports no entry point and no tool, and a tool imports no
  other tool (``LAYERS`` below).
- No import cycles between the modules of the package (package ``__init__`` files included).
- No module imports another package's ``_private`` name, or reads one through a module it imported.
- ARCHITECTURE.md names every package and module, and names none that does not exist.
- One checkpoint reader: ``torch.load(`` appears in dinov2/checkpoint/io.py only.
- Small modules: every module of dinov2/ has at most 500 lines, the trainer at most 400.
"""

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dinov2"
ARCHITECTURE = PACKAGE.parent / "ARCHITECTURE.md"
CHECKPOINT_MODULE = PACKAGE / "checkpoint" / "io.py"
MAX_LINES = 500
MAX_TRAINER_LINES = 400

# Entry points and tools: what a library module must never import.
ENTRY_POINTS = ("dinov2.train", "dinov2.run")
TOOLS = ("dinov2.search", "dinov2.eval.retrieval", "dinov2.eval.baselines")
LIBRARY = (
    "dinov2.eval",
    "dinov2.data",
    "dinov2.models",
    "dinov2.layers",
    "dinov2.loss",
    "dinov2.checkpoint",
    "dinov2.utils",
    "dinov2.fsdp",
    "dinov2.distributed",
    "dinov2.logging",
    "dinov2.configs",
)


def _within(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _modules(*subpackages):
    roots = [PACKAGE / name for name in subpackages] if subpackages else [PACKAGE]
    files = sorted(path for root in roots for path in root.rglob("*.py"))
    assert files, f"no modules under {roots}"
    return files


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _imports(source: str, module: str, is_package: bool = False):
    """(line, imported module, imported name or None) of every import of ``source`` (the module ``module``)."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, None
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package[: len(package) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            for alias in node.names:
                yield node.lineno, base, alias.name


def _imported_modules(source: str, module: str, is_package: bool = False):
    """(line, absolute name) of every module and name that ``source`` imports."""
    for line, base, name in _imports(source, module, is_package):
        yield line, base
        if name is not None:
            yield line, f"{base}.{name}"


def _all_modules():
    return {_module_name(path): path for path in _modules()}


def _resolve(name: str, known) -> str:
    """The module of the package that an imported dotted name refers to (the longest known prefix)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in known:
            return candidate
    return ""


def _import_graph():
    """module -> the package modules it imports. ``from a import b`` depends on module ``a.b`` when that
    is a module, else on ``a`` (whose ``__init__`` defines ``b``)."""
    known = _all_modules()
    graph = {}
    for module, path in known.items():
        targets = set()
        for _, base, name in _imports(path.read_text(), module, _is_package(path)):
            target = f"{base}.{name}" if name is not None and f"{base}.{name}" in known else _resolve(base, known)
            if target and target != module:
                targets.add(target)
        graph[module] = targets
    return graph


def _cycles(graph):
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    counter = [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _forbidden_for(module: str):
    """The packages ``module`` must not import: entry points and tools for the library, other tools for a tool."""
    if _within(module, ENTRY_POINTS):
        return ()
    own_tool = [t for t in TOOLS if _within(module, (t,))]
    if own_tool:
        return ENTRY_POINTS + tuple(t for t in TOOLS if t not in own_tool)
    return ENTRY_POINTS + TOOLS


# ---------------------------------------------------------------------------------------------------
# The scanners themselves catch what they are for
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        "import dinov2.train.train",
        "from dinov2.run import submit",
        "from dinov2 import train",
        "from ..train.optim import build_optimizer",
        "def f():\n    from dinov2.train.train import main",
        "from dinov2.search.index import BinaryIndex",
        "from .retrieval import tool",
    ],
)
def test_the_import_scan_catches_every_spelling_of_an_upward_import(source):
    forbidden = _forbidden_for("dinov2.eval.module")
    names = [name for _, name in _imported_modules(source, "dinov2.eval.module")]
    assert any(_within(name, forbidden) for name in names), names


def test_the_import_scan_lets_downward_imports_pass():
    source = "import torch\nfrom dinov2.checkpoint import load_torch_file\nfrom . import hashing\nfrom .metrics import x"
    forbidden = _forbidden_for("dinov2.eval.module")
    assert not [n for _, n in _imported_modules(source, "dinov2.eval.module") if _within(n, forbidden)]


def test_the_cycle_finder_finds_a_cycle_and_only_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_private_name_scan_sees_both_spellings():
    source = "from dinov2.eval.retrieval.outputs import _pack\nfrom dinov2.search import kernels\nkernels._take(1)\n"
    assert _private_uses(source, "dinov2.eval.hashing.module") == [
        (1, "dinov2.eval.retrieval.outputs._pack"),
        (3, "dinov2.search.kernels._take"),
    ]
    assert _private_uses("from .codes import _kind\n", "dinov2.eval.hashing.ranking") == []


# ---------------------------------------------------------------------------------------------------
# The package
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layer", LIBRARY + TOOLS)
def test_imports_point_down(layer):
    top = layer.split(".", 1)[1].replace(".", "/")
    upward = []
    for path in _modules(top):
        module = _module_name(path)
        if layer in LIBRARY and _within(module, TOOLS):
            continue  # a tool inside a library package is checked as a tool
        forbidden = _forbidden_for(module)
        upward += [
            f"{path.relative_to(PACKAGE.parent)}:{line}: {name}"
            for line, name in _imported_modules(path.read_text(), module, _is_package(path))
            if _within(name, forbidden)
        ]
    assert not upward, "imports pointing up (into an entry point or another tool):\n" + "\n".join(upward)


def test_no_import_cycles():
    cycles = _cycles(_import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def _package_of(module: str) -> str:
    """The package a module belongs to (a package belongs to itself)."""
    if (PACKAGE.parent / module.replace(".", "/") / "__init__.py").is_file():
        return module
    return module.rsplit(".", 1)[0]


def _private_uses(source: str, module: str, is_package: bool = False):
    """(line, dotted name) of each ``_private`` name of another package that ``source`` imports or reads."""
    own = module if is_package else _package_of(module)
    found = []
    aliases = {}
    for line, base, name in _imports(source, module, is_package):
        if not base.startswith("dinov2"):
            continue
        if name is None:
            continue
        if name.startswith("_") and not name.startswith("__") and _package_of(base) != own:
            found.append((line, f"{base}.{name}"))
        aliases[name] = f"{base}.{name}"
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname and alias.name.startswith("dinov2"):
                    aliases[alias.asname] = alias.name
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and aliases[node.value.id] != module
            and _package_of(aliases[node.value.id]) != own
        ):
            found.append((node.lineno, f"{aliases[node.value.id]}.{node.attr}"))
    return sorted(found)


def test_no_private_name_crosses_a_package():
    crossing = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: {name}"
        for path in _modules()
        for line, name in _private_uses(path.read_text(), _module_name(path), _is_package(path))
    ]
    assert not crossing, "private names used from another package:\n" + "\n".join(crossing)


def _named_in_architecture(text: str, path: Path) -> bool:
    relative = path.relative_to(PACKAGE)
    return f"`{relative.parent.name}/{relative.name}`" in text or f"{relative.parent.name}/{relative.name}" in text


def test_architecture_md_names_every_package_and_module():
    text = ARCHITECTURE.read_text()
    missing = []
    for path in _modules():
        if path.name in ("__init__.py", "__main__.py") or path.parent == PACKAGE:
            continue
        if not _named_in_architecture(text, path):
            missing.append(str(path.relative_to(PACKAGE.parent)))
    packages = sorted({p.parent for p in _modules() if p.name == "__init__.py" and p.parent != PACKAGE})
    for package in packages:
        relative = package.relative_to(PACKAGE)
        if f"{relative.parent.name}/{relative.name}/" not in text and f"dinov2/{relative}/" not in text:
            missing.append(f"dinov2/{relative}/ (package)")
    assert not missing, "ARCHITECTURE.md does not name:\n" + "\n".join(missing)


def test_architecture_md_names_no_module_that_does_not_exist():
    text = ARCHITECTURE.read_text()
    names = {n for n in re.findall(r"(?<![\w/])([a-z_]+/[a-z_]+\.py)", text) if not n.startswith(("tests/", "scripts/"))}
    existing = {f"{p.parent.name}/{p.name}" for p in _modules()}
    stale = sorted(name for name in names if name not in existing)
    assert not stale, "ARCHITECTURE.md names modules that do not exist: " + ", ".join(stale)


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
