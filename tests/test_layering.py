"""Imports flow one way: data -> models -> localize -> eval -> service -> callbacks (within data: feature_cache -> extractors ->
extract); index/pose/metrics never import Lightning."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "fuseloc"
# service: the HTTP front of a map bundle (fuseloc/service.py), right of eval.
ORDER = ["types", "errors", "io", "cachekeys", "data", "models", "localize", "eval", "service", "callbacks"]
# types/errors/io/cachekeys are foundations every layer may use.
FOUNDATION = {"types", "errors", "io", "cachekeys"}
# Within data, features flow one way as well: the h5 cache knows no extractor, the extractors know neither the
# cache nor the extraction runs, and the runs drive both: the data modules each may import. Other data modules
# (prepare, datamodule...) are not restricted.
FEATURE_IMPORTS = {"feature_cache": set(), "extractors": set(), "extract": {"feature_cache", "extractors"}}


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


def _feature_module(module: str) -> str | None:
    parts = module.split(".")
    if parts[:2] != ["fuseloc", "data"] or len(parts) < 3:
        return None
    return parts[2]


def test_feature_modules_import_one_way():
    violations = []
    for own, allowed in FEATURE_IMPORTS.items():
        base = PACKAGE / "data" / own
        paths = sorted(base.rglob("*.py")) if base.is_dir() else [base.with_suffix(".py")]
        assert paths and all(p.is_file() for p in paths), f"fuseloc/data/{own} is gone: update FEATURE_IMPORTS"
        for path in paths:
            for name in _imports(path):
                other = _feature_module(name)
                if other is not None and other != own and other not in allowed:
                    violations.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert not violations, violations


def test_feature_cache_needs_no_torch():
    for name in _imports(PACKAGE / "data" / "feature_cache.py"):
        assert name.split(".")[0] not in {"torch", "lightning"}, f"data/feature_cache.py imports {name}"


def test_pure_core_does_not_import_lightning():
    for rel in ["localize/index.py", "localize/pose.py", "eval/metrics.py", "eval/keys.py", "eval/predictions.py",
                "eval/submission.py", "eval/report.py", "localize/pipeline.py", "models/fusion.py"]:
        for name in _imports(PACKAGE / rel):
            assert not name.startswith(("lightning", "pytorch_lightning")), f"{rel} imports {name}"


def test_library_code_does_not_print():
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                raise AssertionError(f"print() in {path.relative_to(PACKAGE)}:{node.lineno}")
