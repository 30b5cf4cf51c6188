"""The layering is checked, not hoped for: import-linter's contracts (pyproject.toml) and what they cover."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]


def test_import_linter_contracts_are_kept() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "3 kept, 0 broken" in done.stdout


def test_nothing_refers_outside_the_repository() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    offenders = []
    for name in tracked:
        path = ROOT / name
        if path.suffix in {".png", ".jpg", ".onnx", ".dcm", ".gz"} or not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if name != "tests/test_layers.py" and ("../shared" in text or "CONTRACT.md" in text):
            offenders.append(name)
    assert not offenders, offenders


PACKAGES = ("biomed", "models", "training", "service", "bench", "cli")


def _graph():  # type: ignore[no-untyped-def]
    import grimp

    return grimp.build_graph(*PACKAGES, include_external_packages=False, exclude_type_checking_imports=True,
                             cache_dir=None)


def _cycles(imports: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(imports):
        if root in index:
            continue
        work = [(root, iter(sorted(imports[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(imports.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
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
    return found


def test_no_import_cycle_anywhere() -> None:
    """No module imports itself back through others: imports inside functions count, ``TYPE_CHECKING`` ones do not."""
    graph = _graph()
    imports = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    assert _cycles(imports) == []
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]  # the check can fail


def test_no_import_from_a_lower_layer_to_a_higher_one() -> None:
    """Function-level imports included (import-linter's contract sees them too; this says so in one assertion)."""
    order = {"cli": 4, "bench": 3, "service": 2, "training": 2, "models": 1, "biomed": 0}
    graph = _graph()
    upward = sorted((m, i) for m in graph.modules for i in graph.find_modules_directly_imported_by(m)
                    if order[i.split(".")[0]] > order[m.split(".")[0]]
                    or {m.split(".")[0], i.split(".")[0]} == {"service", "training"})
    assert upward == []


# Where a kind's name may be compared or a handler class tested: the registry, the schema, the demo generators.
KIND_NAME_ALLOWED = ("biomed/kinds/", "training/demo/", "tests/")


def _project_files() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def _kind_name_comparisons(tree: "ast.AST", names: set[str]) -> list[int]:
    import ast

    def named(node: ast.AST) -> bool:
        if isinstance(node, ast.Constant) and node.value in names:
            return True
        return isinstance(node, (ast.Tuple, ast.List, ast.Set)) and any(
            isinstance(e, ast.Constant) and e.value in names for e in node.elts)

    return sorted({node.lineno for node in ast.walk(tree) if isinstance(node, ast.Compare)  # one entry per line
                   and any(named(side) for side in (node.left, *node.comparators))})


def _handler_isinstance(tree: "ast.AST", handlers: set[str]) -> list[int]:
    import ast

    def classes(node: ast.AST) -> set[str]:
        elts = node.elts if isinstance(node, ast.Tuple) else [node]
        return {e.id if isinstance(e, ast.Name) else e.attr for e in elts if isinstance(e, (ast.Name, ast.Attribute))}

    return [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id in ("isinstance", "issubclass") and len(node.args) == 2
            and classes(node.args[1]) & handlers]


def test_nothing_outside_the_registry_branches_on_a_kind() -> None:
    """No ``== "image"``, ``in ("image", ...)`` outside the kind registry, the schema and the demo generators; no
    ``isinstance`` on a handler class outside ``service/handlers/``."""
    import ast

    from biomed import kinds
    from service import handlers

    names = set(kinds.names())
    handler_classes = {handlers.handler_class(n).__name__ for n in handlers.served_kinds()} | {"Handler"}
    offenders = []
    for path in _project_files():
        where = str(path.relative_to(ROOT))
        tree = ast.parse(path.read_text(), filename=where)
        if not where.startswith(KIND_NAME_ALLOWED):
            offenders += [f"{where}:{line}: compares a kind's name" for line in _kind_name_comparisons(tree, names)]
        if not where.startswith("service/handlers/"):
            offenders += [f"{where}:{line}: isinstance on a handler" for line in _handler_isinstance(tree, handler_classes)]
    assert offenders == []
    probe = ast.parse('if kind == "dna" or model in ("image", "x"):\n    isinstance(h, ImageHandler)\n')
    assert _kind_name_comparisons(probe, names) == [1] and _handler_isinstance(probe, {"ImageHandler"}) == [2]
