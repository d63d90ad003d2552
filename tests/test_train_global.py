"""Training with any global descriptor: a non-VLAD GlobalExtractor selected by class_path trains through
LightningCLI, shares evaluate.py's caches, and its checkpoint evaluates with evaluate.py --checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from fixtures.scripts import load_script
from fixtures.toy_training import MeanMax, MeanProjection

from fuseloc.data.extractors import Vlad
from fuseloc.data.prepare import global_descriptor_dim
from fuseloc.errors import InputError
from fuseloc.models.module import CHECKPOINT_KEY, load_fusion_from_checkpoint


def test_global_dim_comes_from_the_extractor_not_a_vlad_formula():
    assert global_descriptor_dim(MeanProjection(out_dim=24), local_dim=32) == 24  # declared, as networks do
    assert global_descriptor_dim(MeanMax(), local_dim=32) == 64  # measured: declared nowhere
    vlad = Vlad(num_clusters=4)
    assert global_descriptor_dim(vlad, local_dim=32) == 128
    assert vlad.centroids is None  # measured on a copy: the real vocabulary is still trained on the database


def _global_descriptors(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        names: list[str] = []
        f.visititems(lambda name, obj: names.append(name.rsplit("/", 1)[0]) if name.endswith("global_descriptor") else None)
        return {n: f[n]["global_descriptor"][()] for n in names}


def _fit_args(out: Path, global_features: dict) -> list[str]:
    data = {
        "reader": {"class_path": "fixtures.toy_training.ToyReader", "init_args": {"root": str(out / "toy" / "cache")}},
        "local_features": {"class_path": "fixtures.toy_training.ToyExtractor"},
        "global_features": global_features,
        "output_dir": str(out),
        "holdout_every": 2,
        "conditions": [],
        "confuser_min_distance": 2.0,
        "batches": {"points_per_batch": 16, "batches_per_epoch": 2},
    }
    return ["--data", json.dumps(data), "--trainer.fast_dev_run", "true", "--trainer.logger", "false",
            "--trainer.default_root_dir", str(out / "train")]


@pytest.mark.parametrize("global_features,global_dim", [
    ({"class_path": "fixtures.toy_training.MeanProjection", "init_args": {"out_dim": 24}}, 24),
    ({"class_path": "fixtures.toy_training.MeanMax"}, 64),
])
def test_non_vlad_global_extractor_trains_and_its_checkpoint_evaluates(tmp_path, monkeypatch, global_features, global_dim):
    monkeypatch.chdir(tmp_path)  # anything written relative to the working directory stays in tmp_path
    out = tmp_path / "out"
    cli = load_script("train").cli_main(_fit_args(out, global_features), run=False)
    assert type(cli.datamodule.global_features).__name__ == global_features["class_path"].split(".")[-1]
    assert cli.model.fusion.global_dim == global_dim  # linked from the extractor by train.py
    cli.trainer.fit(cli.model, cli.datamodule)
    assert float(cli.trainer.callback_metrics["val/toy/all/recall_0.25m_2deg"]) == 100.0
    checkpoint = tmp_path / "fast.ckpt"
    cli.trainer.save_checkpoint(checkpoint)
    assert torch.load(checkpoint, weights_only=True)[CHECKPOINT_KEY]["init_args"]["global_dim"] == global_dim
    assert load_fusion_from_checkpoint(checkpoint).global_dim == global_dim

    cache = out / "toy" / "cache"
    global_files = sorted(p.name for p in cache.glob("global-feats-*.h5"))
    assert len(global_files) == 1 and "vlad" not in global_files[0]
    before = _global_descriptors(cache / global_files[0])
    # evaluate.py, the same extractor by class_path: same cache file (not rewritten), and the checkpoint applies.
    args = ["--data.reader", json.dumps({"class_path": "fixtures.toy_training.ToyReader", "init_args": {"root": str(cache)}}),
            "--data.local_features", "fixtures.toy_training.ToyExtractor",
            "--data.global_features", json.dumps(global_features), "--data.output_dir", str(out),
            "--lambdas", "[1.0]", "--checkpoint", str(checkpoint), "--progress", "false"]
    assert load_script("evaluate").main(args) == 0
    assert sorted(p.name for p in cache.glob("global-feats-*.h5")) == global_files
    after = _global_descriptors(cache / global_files[0])
    assert after.keys() == before.keys() and all((after[k] == before[k]).all() for k in before)
    summary = json.loads((out / "toy" / "learned" / "summary.json").read_text())
    assert summary["metrics"]["all"]["recall_0.25m_2deg"] == 100.0


def test_a_cache_of_another_size_than_declared_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    class Liar(MeanProjection):
        @property
        def dim(self) -> int:
            return 7

    from fixtures.toy_training import ToyExtractor, ToyReader

    from fuseloc.data.correspondences import BatchConfig
    from fuseloc.data.datamodule import FuseLocDataModule

    dm = FuseLocDataModule(reader=ToyReader(tmp_path / "toy" / "cache"), local_features=ToyExtractor(),
                           global_features=Liar(out_dim=24), output_dir=tmp_path, holdout_every=2, conditions=[],
                           batches=BatchConfig(points_per_batch=16, batches_per_epoch=2))
    assert dm.global_dim == 7
    with pytest.raises(InputError, match="declares 7-D global descriptors, but its cache holds 24-D"):
        dm.setup("fit")
