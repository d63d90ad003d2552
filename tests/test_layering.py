"""Imports flow one way: data -> models -> localize -> eval -> callbacks; index/pose/metrics never import Lightning."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "fuseloc"
ORDER = ["types", "errors", "io", "data", "models", "localize", "eval", "callbacks"]
# types/errors/io are foundations every layer may use.
FOUNDATION = {"types", "errors", "io"}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "fuseloc" or len(parts) < 2:
        return None
    return parts[1]


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def test_modules_import_only_from_their_left():
    violations = []
    for path in PACKAGE.rglob("*.py"):
        own = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        if own not in ORDER:
            continue
        for name in _imports(path):
            layer = _layer(name)
            if layer is None or layer in FOUNDATION or layer == own:
                continue
            if layer in ORDER and ORDER.index(layer) > ORDER.index(own):
                violations.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert not violations, violations


def test_pure_core_does_not_import_lightning():
    for rel in ["localize/index.py", "localize/pose.py", "eval/metrics.py", "localize/pipeline.py", "models/fusion.py"]:
        for name in _imports(PACKAGE / rel):
            assert not name.startswith(("lightning", "pytorch_lightning")), f"{rel} imports {name}"


def test_library_code_does_not_print():
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                raise AssertionError(f"print() in {path.relative_to(PACKAGE)}:{node.lineno}")
