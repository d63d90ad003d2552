"""The benchmark configs parse, keep ${FUSELOC_DATA} for the reader to expand, and carry the paper's λ."""

from __future__ import annotations

from pathlib import Path

import pytest
from readers_e2e import load_evaluate_script

from fuseloc.data.readers.base import resolve_root

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "eval"


@pytest.mark.parametrize("name,reader,lam", [("aachen", "AachenDayNight", 0.4), ("robotcar", "RobotCarSeasons", 0.4),
                                             ("cmu", "ExtendedCMUSeasons", 0.4), ("cambridge", "CambridgeLandmarks", 0.3)])
def test_benchmark_config_instantiates_reader_with_env_root(name, reader, lam, monkeypatch, tmp_path):
    from jsonargparse import ActionConfigFile, ArgumentParser

    evaluate = load_evaluate_script()
    parser = ArgumentParser(default_meta=False)
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_function_arguments(evaluate.evaluate)
    cfg = parser.parse_args(["--config", str(CONFIGS / f"{name}.yaml")])
    init = parser.instantiate_classes(cfg)
    assert type(init["data"]).__name__ == reader
    assert lam in init["lambdas"] and init["query_global"] == "light"
    monkeypatch.setenv("FUSELOC_DATA", str(tmp_path))
    assert resolve_root(init["data"].root, "x").parent == tmp_path
