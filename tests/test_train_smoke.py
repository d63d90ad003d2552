"""Training on a toy scene: fast_dev_run, checkpoint -> evaluate.py, and the CLI (single process and CPU DDP)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from fixtures.scripts import load_script
from fixtures.toy_training import ToyExtractor, ToyReader, toy_data_yaml

from fuseloc.callbacks.fusion_histograms import FusionHistograms
from fuseloc.callbacks.localization_val import LocalizationValidation
from fuseloc.data.config import DataConfig
from fuseloc.data.correspondences import BatchConfig
from fuseloc.data.datamodule import FuseLocDataModule
from fuseloc.data.extractors import Vlad
from fuseloc.errors import InputError
from fuseloc.models.fusion import LearnedFusion
from fuseloc.models.module import FuseLocModule, load_fusion_from_checkpoint

REPO = Path(__file__).resolve().parents[1]


def toy_datamodule(out: Path, **kwargs) -> FuseLocDataModule:
    return FuseLocDataModule(reader=ToyReader(out / "toy" / "cache"), local_features=ToyExtractor(),
                             global_features=Vlad(num_clusters=4), output_dir=out, holdout_every=3, conditions=[],
                             confuser_min_distance=2.0, batches=BatchConfig(points_per_batch=16, batches_per_epoch=4), **kwargs)


def test_fast_dev_run_logs_loss_and_localization_metrics(tmp_path, monkeypatch):
    dm = toy_datamodule(tmp_path)
    model = FuseLocModule(LearnedFusion(dm.local_dim, dm.global_dim))
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    trainer = pl.Trainer(accelerator="cpu", fast_dev_run=True, callbacks=[LocalizationValidation(), FusionHistograms()],
                         default_root_dir=tmp_path / "runs", enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, dm)
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics["train/loss"]) and torch.isfinite(metrics["val/loss"])
    assert "train/miner_discarded_share" in metrics
    # Held-out database images of the toy scene localize exactly.
    assert float(metrics["val/toy/all/recall_0.25m_2deg"]) == 100.0
    assert float(metrics["val/toy/correct_match_pct"]) > 50.0
    assert dm.validation_set.source == "holdout" and len(dm.validation_set.queries) == 2
    # Held-out images are out of the training map.
    assert not set(dm.validation_set.queries.names) & set(dm.validation_set.scene.image_names)
    assert model.fusion.is_fitted
    # no run directory under fast_dev_run: nothing written where a run would go, nor in the working directory
    assert not (tmp_path / "runs").exists() and not any((tmp_path / "cwd").iterdir())


def test_checkpoint_evaluates_next_to_fixed_fusions(tmp_path):
    dm = toy_datamodule(tmp_path)
    model = FuseLocModule(LearnedFusion(dm.local_dim, dm.global_dim))
    checkpoint = pl.callbacks.ModelCheckpoint(monitor="val/score", mode="max")
    trainer = pl.Trainer(accelerator="cpu", max_epochs=2, callbacks=[LocalizationValidation(), checkpoint],
                         default_root_dir=tmp_path, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, dm)
    fusion = load_fusion_from_checkpoint(checkpoint.best_model_path)
    assert isinstance(fusion, LearnedFusion) and not fusion.training
    best = torch.load(checkpoint.best_model_path, weights_only=True)["state_dict"]
    for name, value in fusion.state_dict().items():
        torch.testing.assert_close(value, best[f"fusion.{name}"])
    validation = json.loads((Path(trainer.log_dir) / "validation" / "epoch_001.json").read_text())
    assert validation["metrics"]["val/toy/all/recall_0.25m_2deg"] == 100.0 and len(validation["queries"]) == 2

    evaluate_script = load_script("evaluate")
    data = DataConfig(reader=ToyReader(tmp_path / "toy" / "cache"), local_features=ToyExtractor(),
                      global_features=Vlad(num_clusters=4), output_dir=tmp_path)
    outcomes = evaluate_script.evaluate(data=data, lambdas=[1.0], checkpoint=Path(checkpoint.best_model_path),
                                        progress=False)
    labels = [o.label for o in outcomes]
    assert labels == ["local-only", "learned"]
    learned = outcomes[-1]
    assert learned.summary["all"]["num_queries"] == 3
    assert learned.summary["all"]["recall_0.25m_2deg"] == 100.0


def test_bad_checkpoint_is_a_one_line_input_error(tmp_path):
    with pytest.raises(InputError, match="checkpoint not found"):
        load_fusion_from_checkpoint(tmp_path / "missing.ckpt")
    (tmp_path / "junk.ckpt").write_text("not a checkpoint")
    with pytest.raises(InputError, match="cannot read checkpoint"):
        load_fusion_from_checkpoint(tmp_path / "junk.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(InputError, match="not a fuseloc training checkpoint"):
        load_fusion_from_checkpoint(tmp_path / "other.ckpt")


def _cli_config(tmp_path: Path, out: Path) -> Path:
    config = f"""
trainer:
  max_epochs: 1
  logger:
    class_path: lightning.pytorch.loggers.TensorBoardLogger
    init_args: {{save_dir: {out / 'logs'}, name: run, version: 0}}
model:
  lr: 0.0
{toy_data_yaml(out)}"""
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(config)
    return path


def _run_cli(tmp_path: Path, name: str, *extra: str) -> dict:
    out = tmp_path / name
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(REPO / "train.py"), "fit", "--config", str(_cli_config(tmp_path, out)), *extra],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log_dir = out / "logs" / "run" / "version_0"
    assert list(log_dir.glob("events.out.tfevents.*")) and list((log_dir / "checkpoints").glob("*.ckpt"))
    return json.loads((log_dir / "validation" / "epoch_000.json").read_text())


def test_cli_last_checkpoint_is_the_latest_epoch_not_the_best(tmp_path):
    _run_cli(tmp_path, "two_epochs", "--trainer.max_epochs", "2")  # lr 0: the score never improves after epoch 0
    checkpoints = tmp_path / "two_epochs" / "logs" / "run" / "version_0" / "checkpoints"
    assert torch.load(checkpoints / "last.ckpt", weights_only=False)["epoch"] == 1
    assert [p.name for p in checkpoints.glob("best-*.ckpt")] == ["best-epoch=00.ckpt"]


@pytest.mark.slow
def test_ddp_two_processes_give_the_single_process_validation(tmp_path):
    """lr = 0 keeps the weights at their deterministic PCA start, so any difference would come from sharding."""
    single = _run_cli(tmp_path, "single")
    ddp = _run_cli(tmp_path, "ddp", "--trainer.devices", "2", "--trainer.strategy", "ddp")
    assert len(single["queries"]) == 3 and [q["name"] for q in ddp["queries"]] == [q["name"] for q in single["queries"]]
    for a, b in zip(single["queries"], ddp["queries"], strict=True):
        assert a == {**b, "timings": a["timings"]}
    metrics = {k: v for k, v in single["metrics"].items()}
    assert set(metrics) == set(ddp["metrics"]) and "val/toy/all/recall_0.25m_2deg" in metrics
    for key, value in metrics.items():
        assert ddp["metrics"][key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def _resumable_config(tmp_path: Path, out: Path) -> Path:
    """The toy run with base.yaml's logger (save_dir left at its default) and a learning rate that moves weights."""
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(f"""
trainer:
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{save_last: true, filename: "latest-{{epoch:02d}}"}}
model:
  lr: 0.01
{toy_data_yaml(out)}""")
    return path


def test_ckpt_path_last_resumes_the_latest_run_under_the_output_dir_and_ends_with_the_same_weights(tmp_path, monkeypatch):
    """Issue 14 item 6: --ckpt_path last found nothing (each run got a new version folder), runs landed in
    ./outputs/train whatever data.output_dir said, and a resumed run redrew epoch 0's batches."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(REPO / "tests"))
    train_script = load_script("train")

    def fit(out: Path, epochs: int, *extra: str) -> None:
        train_script.cli_main(["fit", "--config", str(_resumable_config(tmp_path, out)), "--trainer.max_epochs",
                               str(epochs), "--trainer.enable_model_summary", "false", *extra])

    fit(tmp_path / "straight", 2)
    fit(tmp_path / "resumed", 1)  # as if killed after the first epoch's checkpoint
    runs = tmp_path / "resumed" / "train" / "town"
    after_first = torch.load(runs / "version_0" / "checkpoints" / "last.ckpt", weights_only=False)
    fit(tmp_path / "resumed", 2, "--ckpt_path", "last")
    assert not (tmp_path / "outputs").exists()  # nothing under the working directory
    assert [p.name for p in runs.iterdir()] == ["version_0"]  # the run went on in its own folder
    straight = torch.load(tmp_path / "straight" / "train" / "town" / "version_0" / "checkpoints" / "last.ckpt",
                          weights_only=False)
    resumed = torch.load(runs / "version_0" / "checkpoints" / "last.ckpt", weights_only=False)
    assert straight["epoch"] == resumed["epoch"] == 1 and straight["global_step"] == resumed["global_step"]
    assert straight["state_dict"].keys() == resumed["state_dict"].keys()
    for name, value in straight["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][name], value, rtol=0, atol=0, msg=name)
    assert after_first["epoch"] == 0  # the second epoch was trained, not skipped or loaded
    assert any(not torch.equal(after_first["state_dict"][n], v) for n, v in straight["state_dict"].items())


def _epoch_scores(log_dir: Path) -> list[float]:
    files = sorted((log_dir / "validation").glob("epoch_*.json"))
    return [json.loads(f.read_text())["metrics"]["val/score"] for f in files]


@pytest.mark.slow
def test_the_selected_checkpoint_follows_the_validation_queries(tmp_path):
    """One training (same data, seed and batches), validated on different query subsets: each run keeps the
    epoch its own validation scores best, so changing the validation queries changes the checkpoint chosen."""
    chosen, scores = {}, {}
    for label, extra in (("all", ()), ("one", ("--data.max_val_queries", "1"))):
        _run_cli(tmp_path, label, "--trainer.max_epochs", "4", "--model.lr", "0.05", *extra)
        log_dir = tmp_path / label / "logs" / "run" / "version_0"
        scores[label] = _epoch_scores(log_dir)
        (best,) = [p.name for p in (log_dir / "checkpoints").glob("best-*.ckpt")]
        chosen[label] = int(best.removeprefix("best-epoch=").removesuffix(".ckpt"))
        assert len(scores[label]) == 4
        assert chosen[label] == int(np.argmax(scores[label]))  # the first best epoch of its own validation
    assert scores["all"] != scores["one"]
    assert chosen["all"] != chosen["one"], (scores, chosen)
