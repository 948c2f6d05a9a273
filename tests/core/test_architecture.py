"""The package layout the docs promise (docs/architecture.md), checked from the source:
core imports neither engine and has no import cycle; the adapters reach core only through
its public face (``anyattn.core``)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "core"
LAZY = ("vllm.", "sgl_kernel.", "flash_attn.", "anyattn.core.providers.fa4_mods")


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["anyattn", *parts])


def _runtime_imports(path: Path) -> list[tuple[str, int]]:
    """Absolute module names a file imports when it runs (not under ``TYPE_CHECKING``), with
    the nesting depth (0: module level)."""
    package = _module(path) if path.name == "__init__.py" else _module(path).rpartition(".")[0]
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST, depth: int) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            inner = depth + isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                found.extend((alias.name, inner) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = package.split(".")
                if child.level:
                    base = base[: len(base) - child.level + 1]
                    name = ".".join(base + ([child.module] if child.module else []))
                else:
                    name = child.module
                found.append((name, inner))
                found.extend((f"{name}.{alias.name}", inner) for alias in child.names)
            visit(child, inner)

    visit(ast.parse(path.read_text()), 0)
    return found


def _core_graph() -> dict[str, set[str]]:
    files = {_module(p): p for p in CORE.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        graph[name] = {m for m, depth in _runtime_imports(path) if depth == 0 and m in files}
    return graph


def test_core_imports_neither_engine_nor_imports_inside_functions():
    for path in CORE.rglob("*.py"):
        for name, depth in _runtime_imports(path):
            assert not name.startswith(("vllm", "sglang")) or depth > 0, (path, name)
            # The only function-level imports: the installs' optional FlashAttention builds
            # (FA3 from vLLM / sgl_kernel, FA4 from vLLM / flash-attn-4) and FA4's CuTe-DSL
            # modifiers, which need one of them.
            assert depth == 0 or name.startswith(LAZY), (path, name)


def test_core_has_no_import_cycle():
    graph = _core_graph()
    state: dict[str, int] = {}

    def walk(node: str, trail: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if dep == node or dep.startswith(node + "."):
                continue  # a package importing its own submodules
            assert state.get(dep) != 1, " -> ".join(trail + [dep])
            if dep not in state:
                walk(dep, trail + [dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            walk(node, [node])


def test_adapters_import_only_cores_public_face():
    for adapter in ("vllm_plugin", "sglang_backend"):
        for path in (ROOT / adapter).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("anyattn"):
                    assert node.module == "anyattn.core", (path, node.module)
                elif isinstance(node, ast.Import):
                    assert not any(a.name.startswith("anyattn.core") for a in node.names), path


def test_test_modules_have_unique_names():
    """pytest imports test files by basename (tests/ has no packages), so two files of one name
    in different folders cannot run in one session (the GPU pipeline runs tests/core and
    tests/gpu together)."""
    seen: dict[str, Path] = {}
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        other = seen.setdefault(path.name, path)
        assert other == path, f"{path} and {other} share a name"
