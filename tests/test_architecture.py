"""The import rules of docs/architecture.md, checked on the source (AST, nothing imported).

- A stage imports only stages in lower layers (never one to its right, never a sibling stage of
  its own layer); its own sub-modules are free.
- Private names (``_x``) are imported only inside their own stage package.
- Only ``trtkld/trt/_backend.py`` imports ``tensorrt`` / ``pycuda`` / ``cuda``, and only lazily
  (inside a function).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "trtkld"

# Lowest first. Keep in step with docs/architecture.md ("Who may import whom").
LAYERS: list[set[str]] = [
    {"errors", "_io", "_version"},                       # foundation
    {"data", "histogram", "search", "cache", "qdq"},     # independent stages
    {"collect", "demo"},                                  # model runner; bundled models
    {"fidelity", "scaleout"},     # Q/DQ model vs FP32 in ONNX Runtime; collection sharded on Ray
    {"pipeline"},                                         # data -> collect -> histogram -> search
    {"calibration"},                                      # public API, the one cache writer
    {"trt", "evaluate", "report"},                        # consumers of the calibration API
    {"cli"},                                              # the command line
    {"__init__"},                                         # the package's lazy re-exports
]
LAYER_OF = {stage: i for i, layer in enumerate(LAYERS) for stage in layer}
GPU_MODULES = ("tensorrt", "pycuda", "cuda")
GATEWAY = PACKAGE / "trt" / "_backend.py"


def _stage(path: Path) -> str:
    """``trtkld/search/kl_ppq.py`` -> ``search``; ``trtkld/pipeline.py`` -> ``pipeline``."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def _target_stage(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "trtkld":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(tree: ast.AST):
    """(module, imported names, node, at module level) for every import statement."""
    top_level = {id(n) for n in getattr(tree, "body", [])}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node, id(node) in top_level
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module, [a.name for a in node.names], node, id(node) in top_level


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_every_stage_has_a_layer():
    stages = {_stage(p) for p in SOURCES}
    assert stages <= set(LAYER_OF), f"add {sorted(stages - set(LAYER_OF))} to LAYERS and the docs"


def _violations(source: str, tree: ast.AST) -> list[str]:
    """Import-rule violations of a module of stage ``source``."""
    problems = []
    for module, names, node, _ in _imports(tree):
        target = _target_stage(module)
        if target is None:
            continue
        targets = {target}
        if target == "__init__":          # ``from trtkld import demo`` imports stage ``demo``
            targets = {n if n in LAYER_OF else "__init__" for n in names}
        for t in targets:
            if t != source and LAYER_OF[t] >= LAYER_OF[source]:
                problems.append(f"line {node.lineno}: {source} (layer {LAYER_OF[source]}) imports "
                                f"{t} (layer {LAYER_OF[t]})")
        for name in names:
            if name.startswith("_") and not name.startswith("__") and target != source:
                problems.append(f"line {node.lineno}: private name {name} from {module}")
    return problems


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_follow_the_stage_graph(path):
    problems = _violations(_stage(path), ast.parse(path.read_text(encoding="utf-8")))
    assert not problems, f"{path.relative_to(PACKAGE)}:\n" + "\n".join(problems)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_only_the_backend_imports_tensorrt_and_pycuda_and_lazily(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for module, _, node, top in _imports(tree):
        if module.split(".")[0] in GPU_MODULES:
            found.append((node.lineno, module, top))
    for node in ast.walk(tree):   # importlib.import_module("tensorrt") counts too
        if (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module"
                and node.args and isinstance(node.args[0], ast.Constant)
                and str(node.args[0].value).split(".")[0] in GPU_MODULES):
            found.append((node.lineno, node.args[0].value, False))
    if path == GATEWAY:
        assert not [f for f in found if f[2]], f"module-level GPU import in _backend.py: {found}"
    else:
        assert not found, f"{path.relative_to(PACKAGE)} imports {found}; use trtkld/trt/_backend.py"


@pytest.mark.parametrize("source, code, expected", [
    ("search", "from trtkld.cli.args import MethodArgs", "search (layer 1) imports cli (layer 7)"),
    ("search", "def f():\n    from trtkld.cache import parse_cache", "imports cache (layer 1)"),
    ("report", "from trtkld import trt", "report (layer 6) imports trt (layer 6)"),
    ("cli", "from trtkld.search.result import _F32_MAX", "private name _F32_MAX"),
])
def test_the_checks_catch_violations(source, code, expected):
    problems = _violations(source, ast.parse(code))
    assert any(expected in p for p in problems), problems


def test_allowed_imports_pass():
    code = "from trtkld.errors import DataError\nfrom trtkld.search import _private_here"
    assert _violations("search", ast.parse(code)) == []
    assert _violations("cli", ast.parse("from trtkld import demo, trt")) == []
