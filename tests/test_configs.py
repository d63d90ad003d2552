"""Every YAML under configs/ parses and instantiates with the CLI it is written for (nothing is run)."""

import importlib.util
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"fuseloc_script_{name}", REPO / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def is_train_config(path: Path) -> bool:
    """train.py configs (LightningCLI: trainer/model/data-module keys) versus evaluate.py configs."""
    if path.parent.name == "eval":
        return False
    if path.parent.name == "train" or path.name == "base.yaml":
        return True
    content = yaml.safe_load(path.read_text()) or {}
    data = content.get("data", {})
    return bool({"trainer", "model", "seed_everything"} & set(content)) or (isinstance(data, dict) and "class_path" not in data)


def test_there_are_configs_of_both_kinds():
    kinds = {is_train_config(p) for p in CONFIGS}
    assert kinds == {True, False}


@pytest.mark.parametrize("path", [p for p in CONFIGS if is_train_config(p)], ids=lambda p: str(p.relative_to(REPO)))
def test_train_config_instantiates(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # loggers and outputs resolve relative paths here, never in the repository
    monkeypatch.setattr(sys, "argv", ["train.py"])
    train = _load_script("train")
    cli = train.cli_main(["--config", str(path)], run=False)
    assert cli.model.fusion.local_dim == cli.datamodule.local_dim
    assert cli.model.fusion.global_dim == cli.datamodule.global_dim
    assert any(type(c).__name__ == "LocalizationValidation" for c in cli.trainer.callbacks)


@pytest.mark.parametrize("path", [p for p in CONFIGS if not is_train_config(p)], ids=lambda p: str(p.relative_to(REPO)))
def test_eval_config_instantiates(path, monkeypatch, tmp_path):
    monkeypatch.setenv("FUSELOC_DATA", str(tmp_path))
    parser = _load_script("evaluate").build_parser()
    cfg = parser.parse_args(["--config", str(path)])
    cfg.pop("config", None)
    cfg.pop("log_level", None)
    init = parser.instantiate(cfg)
    assert init.get("data") is not None


def test_train_cli_rejects_unknown_keys(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["train.py"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  learning_rate: 0.1\n")
    train = _load_script("train")
    with pytest.raises(SystemExit):
        train.cli_main(["--config", str(bad)], run=False)
