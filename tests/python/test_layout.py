"""The package's layering (docs/architecture.md): what may import what."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import memscale

PACKAGE = Path(memscale.__file__).parent


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out.append((".".join(parts), path))
    return out


def _imports(name: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(absolute module, imported names, line) of every import statement in the file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((module, [alias.name for alias in node.names], node.lineno))
    return found


def _is_submodule(module: str, name: str) -> bool:
    return (PACKAGE.parent / module.replace(".", "/") / f"{name}.py").exists() or \
        (PACKAGE.parent / module.replace(".", "/") / name / "__init__.py").exists() or \
        (module == "memscale" and name == "_C")


def test_only_the_facade_and_the_cli_import_memscale_itself() -> None:
    offenders = []
    for name, path in _modules():
        if name == "memscale" or name == "memscale.__main__" or name.startswith("memscale.cli"):
            continue
        for module, names, line in _imports(name, path):
            if module == "memscale" and (not names or any(not _is_submodule(module, n) for n in names)):
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {names or 'memscale'}")
    assert not offenders, "modules import the package facade:\n" + "\n".join(offenders)


def test_runtime_never_imports_the_reference_models() -> None:
    offenders = [f"{path.relative_to(PACKAGE.parent)}:{line}"
                 for name, path in _modules() if name.startswith("memscale.runtime")
                 for module, names, line in _imports(name, path)
                 if module.startswith("memscale.testing")
                 or (module == "memscale" and "testing" in names)]
    assert not offenders, offenders
    code = ("import sys, memscale.runtime.training, memscale.runtime.inference; "
            "print([m for m in sys.modules if m.startswith('memscale.testing')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_only_planning_calls_the_engine() -> None:
    callers = sorted(str(path.relative_to(PACKAGE.parent)) for name, path in _modules()
                     if "_C.plan(" in path.read_text())
    assert callers == ["memscale/planning.py"], callers


def test_no_duplicate_layer_discovery_or_registry() -> None:
    """One discovery (profiler/discovery.py), one registry (runtime/hooks.py)."""
    texts = {str(path.relative_to(PACKAGE.parent)): path.read_text() for _, path in _modules()}
    assert [p for p, t in texts.items() if "def _repeated" in t or "def _holds_blocks" in t] == \
        ["memscale/profiler/discovery.py"]
    assert [p for p, t in texts.items() if "WeakKeyDictionary()" in t and "nn.Module" in t] == \
        ["memscale/runtime/hooks.py"]
    assert not [p for p, t in texts.items() if "._cdata" in t and p != "memscale/profiler/storage.py"]
