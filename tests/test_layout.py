"""The house: imports point one way (entry points -> training -> evaluation -> records -> config ->
attacks -> data / models / methods -> core), no import circle, imports at the top of modules."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "advrw"
# Higher imports lower, never the other way. Entry points (train, eval, report, export) sit on top.
RANK = {"train": 9, "eval": 9, "report": 9, "export": 9, "training": 8, "evaluation": 7, "records": 6,
        "config": 5, "attacks": 4, "data": 3, "models": 3, "methods": 3, "core": 1, "_compat": 0}
# Deferred on purpose (heavy optional libraries, or Hydra/W&B pieces only some paths need).
DEFERRED_OK = ("torchattacks", "foolbox", "autoattack", "robustbench", "wandb", "matplotlib", "submitit",
               "hydra", "omegaconf", "tqdm", "numpy", "PIL", "scipy", "timm", "torchvision", "advrw._compat")


def _modules():
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        yield name, path, ast.parse(path.read_text())


def _imports(name: str, tree: ast.AST, top_only: bool):
    nodes = tree.body if top_only else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.level:  # relative import
                base = name.split(".")[: -node.level] if not name.endswith("__init__") else name.split(".")
                mod = ".".join(base + [node.module])
            else:
                mod = node.module
            yield node, mod, [f"{mod}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield node, a.name, []


def _advrw_targets(mod: str, names: list[str], known: set[str]) -> list[str]:
    out = [n for n in names if n in known]  # from advrw.pkg import module
    return out or ([mod] if mod in known else [])


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "advrw"


def test_imports_point_one_way():
    mods = {name: tree for name, _, tree in _modules()}
    bad = []
    for name, tree in mods.items():
        if name == "advrw":
            continue
        for node, mod, names in _imports(name, tree, top_only=False):
            if not mod.startswith("advrw"):
                continue
            for target in _advrw_targets(mod, names, set(mods)) or [mod]:
                src, dst = _layer(name), _layer(target)
                if src == dst or dst == "advrw":
                    continue
                if RANK.get(dst, 0) >= RANK.get(src, 0):
                    bad.append(f"{name} -> {target}")
    assert not bad, "imports against the direction:\n" + "\n".join(sorted(set(bad)))


def test_no_import_circle():
    mods = {name: tree for name, _, tree in _modules()}
    graph = {name: set() for name in mods}
    for name, tree in mods.items():
        for node, mod, names in _imports(name, tree, top_only=False):
            if mod.startswith("advrw"):
                graph[name] |= {t for t in _advrw_targets(mod, names, set(mods)) if t != name}
    # a package's __init__ importing its own modules is not a circle through the package
    seen, stack, cycles = set(), [], []

    def visit(n):
        if n in stack:
            cycles.append(stack[stack.index(n):] + [n])
            return
        if n in seen:
            return
        seen.add(n)
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if not (n.startswith(m + ".") and m in mods):  # module -> its own package __init__
                visit(m)
        stack.pop()

    for n in sorted(graph):
        visit(n)
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_imports_at_the_top_unless_deferred_on_purpose():
    """A function-level import is for a heavy optional library (or Hydra/W&B on some paths only)."""
    late = []
    for name, path, tree in _modules():
        top = set(map(id, tree.body))
        lines = path.read_text().splitlines()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top:
                mod = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
                if isinstance(node, ast.ImportFrom) and node.level:
                    mod = "advrw"
                if mod is None or mod.split(".")[0] in ("__future__",):
                    continue
                if not mod.startswith("advrw") and mod.split(".")[0] not in DEFERRED_OK:
                    continue  # the stdlib inside a function is harmless
                if mod.startswith(DEFERRED_OK) or "# deferred:" in lines[node.lineno - 1]:
                    continue
                if mod.startswith("advrw") and name.endswith("__main__"):
                    continue
                late.append(f"{path.relative_to(ROOT.parent)}:{node.lineno} imports {mod} inside a function")
    # The entry points' ``if __name__ == "__main__"`` blocks re-import themselves (launchers pickle by reference).
    late = [ln for ln in late if not any(ln.endswith(f"imports advrw.{e} inside a function")
                                         for e in ("train", "eval", "report", "export"))]
    assert not late, "\n".join(late)
