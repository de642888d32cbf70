"""The code's shape in figures: the longest functions and classes, the strategy names compared
outside the strategy registry, and whether the import graph has a cycle (modules and folders).

    python benchmarks/code_shape.py [--src DIR]
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
STRATEGY_NAMES = {"features", "frozen", "finetune", "reinit", "bilinear", "scratch", "auto"}
REGISTRIES = ("strategy_registry.py", "training/strategies.py")


def lengths(root: Path) -> tuple[list, list]:
    functions, classes = [], []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            span = getattr(node, "end_lineno", 0) - getattr(node, "lineno", 0) + 1
            where = f"{path.relative_to(root)}:{getattr(node, 'name', '')}"
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions.append((span, where))
            elif isinstance(node, ast.ClassDef):
                classes.append((span, where))
    return sorted(functions, reverse=True), sorted(classes, reverse=True)


def strategy_comparisons(root: Path) -> list[str]:
    """`config.strategy == "finetune"`, `options["strategy"] in ("finetune", "bilinear")`, ... anywhere
    but the registry: a comparison of something named strategy with a strategy's name."""
    found = []
    for path in sorted(root.rglob("*.py")):
        if path.relative_to(root).as_posix() in REGISTRIES:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Compare) or "strateg" not in ast.unparse(node):
                continue
            constants = [c for c in ast.walk(node) if isinstance(c, ast.Constant) and c.value in STRATEGY_NAMES]
            if constants:
                found.append(f"{path.relative_to(root)}:{node.lineno}")
    return found


def import_cycles(src: Path) -> tuple[int, int]:
    import grimp

    sys.path.insert(0, str(src))
    graph = grimp.build_graph("transferlab", include_external_packages=False, exclude_type_checking_imports=True)
    edges = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    folders: dict[str, set[str]] = {}
    for m, targets in edges.items():
        unit = ".".join(m.split(".")[:2])
        folders.setdefault(unit, set()).update(".".join(t.split(".")[:2]) for t in targets)
    return _cyclic(edges), _cyclic({k: v - {k} for k, v in folders.items()})


def _cyclic(edges: dict[str, set[str]]) -> int:
    """How many modules sit on a cycle (reachable from themselves)."""
    count = 0
    for start in edges:
        seen, todo = set(), list(edges[start])
        while todo:
            node = todo.pop()
            if node == start:
                count += 1
                break
            if node not in seen:
                seen.add(node)
                todo.extend(edges.get(node, ()))
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", default=str(HERE), help="a checkout (its src/transferlab is read)")
    args = parser.parse_args()
    root = Path(args.src) / "src" / "transferlab"
    functions, classes = lengths(root)
    print("longest functions:", ", ".join(f"{w} {n}" for n, w in functions[:3]))
    print("longest classes:  ", ", ".join(f"{w} {n}" for n, w in classes[:3]))
    found = strategy_comparisons(root)
    print(f"strategy-name comparisons outside {' and '.join(REGISTRIES)}: {len(found)} in "
          f"{len({f.split(':')[0] for f in found})} modules")
    modules, folders = import_cycles(root.parent)
    print(f"modules on an import cycle: {modules}; folders on one: {folders}")


if __name__ == "__main__":
    main()
