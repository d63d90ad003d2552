"""The benchmark configs parse and keep ${FUSELOC_DATA} for the reader to expand; fuseloc's presets use its own
fusion, the paper presets (configs/eval/paper/) the authors' exact settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures.scripts import load_script

from fuseloc.data.readers.base import resolve_root

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "eval"


READERS = {"aachen": "AachenReader", "robotcar": "RobotCarReader", "cmu": "CMUReader",
           "cambridge": "CambridgeReader"}


def _parse(path: Path):
    cfg = load_script("evaluate").build_parser().parse_args(["--config", str(path)])
    cfg.pop("config", None)
    cfg.pop("log_level", None)
    return cfg


def _instantiate(path: Path) -> dict:
    return load_script("evaluate").build_parser().instantiate(_parse(path))


@pytest.mark.parametrize("name", sorted(READERS))
def test_benchmark_config_instantiates_reader_with_env_root(name, monkeypatch, tmp_path):
    init = _instantiate(CONFIGS / f"{name}.yaml")
    assert type(init["data"].reader).__name__ == READERS[name]
    # fuseloc's own operating point: PCA, unit-norm reduced part, evaluate.py's default λ beside local-only.
    assert init["lambdas"] == [1.0, 0.5] and init["reduction"] == "pca" and init["normalize_reduced"]
    assert init["localizer"].query_global == "light"
    monkeypatch.setenv("FUSELOC_DATA", str(tmp_path))
    assert resolve_root(init["data"].reader.root, "x").parent == tmp_path


@pytest.mark.parametrize("name,lam,global_class", [("aachen", 0.4, "MegaLoc"), ("robotcar", 0.4, "MegaLoc"),
                                                   ("cmu", 0.4, "MegaLoc"), ("cambridge", 0.3, "Salad")])
def test_paper_preset_is_the_authors_fusion(name, lam, global_class):
    # Parsed, not instantiated: the deep extractors look for their weight files when constructed.
    cfg = _parse(CONFIGS / "paper" / f"{name}.yaml")
    assert cfg.data.reader.class_path.endswith(READERS[name])
    assert cfg.data.local_features.class_path == "fuseloc.data.extractors.D2Net"
    # D2-Net's and the global extractor's own defaults (every keypoint, 1600 px; 64 clusters), nothing carried
    # over from RootSIFT or VLAD.
    assert cfg.data.local_features.init_args.max_keypoints == 0
    assert cfg.data.local_features.init_args.resize_max == 1600
    assert cfg.data.global_features.class_path == f"fuseloc.data.extractors.{global_class}"
    assert cfg.data.global_features.init_args.num_clusters == 64
    assert cfg.lambdas == [1.0, lam]
    assert cfg.reduction == "shuffle" and cfg.normalize_reduced is False
    assert cfg.localizer.query_global == "light"
