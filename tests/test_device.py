"""Device and dtype correctness: the fusion may live anywhere, numpy goes in and comes back out.

CPU tests stand in for a GPU with a fusion in float64 whose methods assert that their inputs are on its
device and in its dtype: the code paths that once built CPU float32 tensors and called ``.numpy()`` on the
output fail them. The ``gpu`` tests run the same paths on CUDA (skipped without one; benchmarks/gpu_check.sh
runs them on a GPU machine).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from fixtures.scripts import load_script
from fixtures.toy import make_toy_scene
from fixtures.toy_training import ToyExtractor, ToyReader, toy_data_yaml

from fuseloc.callbacks.localization_val import LocalizationValidation
from fuseloc.data.config import DataConfig
from fuseloc.data.correspondences import BatchConfig
from fuseloc.data.datamodule import FuseLocDataModule
from fuseloc.data.extractors import Vlad
from fuseloc.data.feature_cache import FeatureCache
from fuseloc.errors import InputError
from fuseloc.localize.fused_map import build_fused_map
from fuseloc.localize.index import IndexConfig, MapIndex, gpu_available
from fuseloc.localize.pipeline import Localizer, LocalizerConfig, localize_queries
from fuseloc.models.fusion import (
    FixedFusion,
    LearnedFusion,
    fuse_numpy,
    fusion_placement,
    to_fusion,
    to_numpy,
)
from fuseloc.models.module import FuseLocModule

REPO = Path(__file__).resolve().parents[1]
CUDA = torch.cuda.is_available()
needs_cuda = [pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs a CUDA device")]


def _check_placement(fusion: torch.nn.Module, *tensors: torch.Tensor) -> None:
    device, dtype = fusion_placement(fusion)
    for t in tensors:
        assert t.device == device and t.dtype == dtype, f"input on {t.device}/{t.dtype}, fusion on {device}/{dtype}"


class StrictPlacement:
    """A fusion mixin that refuses inputs not on the fusion's device and dtype (what a CUDA fusion does, loudly)."""

    def reduce_global(self, global_desc):
        _check_placement(self, global_desc)
        return super().reduce_global(global_desc)

    def fuse(self, local_desc, reduced_global):
        _check_placement(self, local_desc, reduced_global)
        return super().fuse(local_desc, reduced_global)


class StrictFixedFusion(StrictPlacement, FixedFusion):
    pass


class StrictLearnedFusion(StrictPlacement, LearnedFusion):
    pass


def _fitted(cls, cache: FeatureCache, names, **kwargs):
    fusion = cls(32, 16, **kwargs)
    fusion.fit(cache.global_descriptors(names))
    return fusion.eval()


# ------------------------------------------------------------------------------------------ helper contract


def test_helper_moves_numpy_to_the_fusion_and_back():
    fusion = FixedFusion(4, 3, lam=0.5, reduction="gaussian").double()
    assert fusion_placement(fusion) == (torch.device("cpu"), torch.float64)
    for array in (np.ones((2, 4), np.float32), np.ones((2, 4), np.float16)):
        tensor = to_fusion(fusion, array)
        assert tensor.dtype == torch.float64 and tensor.device == torch.device("cpu")
    frozen = np.ones((2, 4), np.float32)
    frozen.flags.writeable = False  # h5py and memory maps hand out such arrays
    assert to_fusion(fusion, frozen).dtype == torch.float64
    out = to_numpy(torch.ones(2, 3, requires_grad=True) * 2)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and (out == 2).all()
    # A module without tensors computes on the CPU in float32.
    assert fusion_placement(torch.nn.Identity()) == (torch.device("cpu"), torch.float32)


def test_fuse_numpy_runs_where_the_fusion_lives_and_matches_float32():
    rng = np.random.default_rng(0)
    local, glob = rng.standard_normal((50, 32)).astype(np.float32), rng.standard_normal(16).astype(np.float32)
    base = LearnedFusion(32, 16, conditioned_gate=True, project_local=True)
    base.fit(rng.standard_normal((20, 16)).astype(np.float32))
    strict = StrictLearnedFusion(32, 16, conditioned_gate=True, project_local=True)
    strict.load_state_dict(base.state_dict())
    strict.double().eval()
    out = fuse_numpy(strict, local, glob)
    assert isinstance(out, np.ndarray) and out.shape == (50, 32) and out.dtype == np.float64
    with torch.no_grad():
        expected = base.eval()(torch.from_numpy(local), torch.from_numpy(glob)[None]).numpy()
    np.testing.assert_allclose(out, expected, atol=1e-5)
    # [1 x G] global descriptors are accepted too.
    np.testing.assert_allclose(fuse_numpy(strict, local, glob[None]), out)


# ------------------------------------------------------------------------- map, localizer and training on CPU


def test_map_and_localizer_with_a_float64_fusion_equal_float32(tmp_path):
    toy = make_toy_scene(tmp_path)
    cache = FeatureCache(toy.local_path, toy.global_path)
    names = toy.scene.image_names
    reference = _fitted(FixedFusion, cache, names, lam=0.5)
    strict = _fitted(StrictFixedFusion, cache, names, lam=0.5).double()
    ref_map = build_fused_map(toy.scene, cache, reference, feature_tag="toy", progress=False)
    strict_map = build_fused_map(toy.scene, cache, strict, feature_tag="toy", progress=False)
    np.testing.assert_allclose(strict_map.descriptors.astype(np.float32), ref_map.descriptors.astype(np.float32), atol=2e-3)
    assert strict_map.fusion_state["projection"].dtype == np.float64
    config = LocalizerConfig(min_inliers=10)
    ref = localize_queries(Localizer(ref_map, config, reference), toy.queries, cache, progress=False)
    got = localize_queries(Localizer(strict_map, config, strict), toy.queries, cache, progress=False)
    for name in toy.queries.names:
        assert got[name].success and got[name].num_inliers == ref[name].num_inliers
        np.testing.assert_allclose(got[name].pose.t, ref[name].pose.t, atol=1e-6)
    cache.close()


def test_fast_dev_run_in_float64_goes_through_the_validation_callback(tmp_path):
    """Lightning's 64-true precision puts the fusion in float64 (as a GPU run puts it on CUDA); the validation
    callback's map building and matching must follow it."""
    dm = FuseLocDataModule(reader=ToyReader(tmp_path / "toy" / "cache"), local_features=ToyExtractor(),
                           global_features=Vlad(num_clusters=4), output_dir=tmp_path, holdout_every=3, conditions=[],
                           confuser_min_distance=2.0, batches=BatchConfig(points_per_batch=16, batches_per_epoch=2))
    model = FuseLocModule(StrictLearnedFusion(dm.local_dim, dm.global_dim))
    trainer = pl.Trainer(accelerator="cpu", precision="64-true", fast_dev_run=True, callbacks=[LocalizationValidation()],
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, dm)
    assert model.fusion.global_projection.dtype == torch.float64
    assert float(trainer.callback_metrics["val/toy/all/recall_0.25m_2deg"]) == 100.0


# ------------------------------------------------------------------------------------------ faiss and --device


@pytest.mark.skipif(gpu_available(), reason="checks the refusal; this machine has faiss-gpu and a GPU")
def test_faiss_gpu_request_without_faiss_gpu_is_a_one_line_input_error():
    points = np.random.default_rng(0).standard_normal((100, 8)).astype(np.float32)
    with pytest.raises(InputError, match="use_gpu") as info:
        MapIndex(points, IndexConfig(kind="flat", use_gpu=True))
    assert "\n" not in str(info.value)
    with pytest.raises(InputError, match="use_gpu"):
        # The refusal comes before the (possibly minutes-long) IVF training.
        MapIndex(points, IndexConfig(kind="ivf", nlist=2, use_gpu=True))


def test_evaluate_device_option(caplog):
    evaluate_script = load_script("evaluate")
    assert evaluate_script.resolve_device("cpu") == torch.device("cpu")
    assert evaluate_script.resolve_device("auto") == torch.device("cuda" if CUDA else "cpu")
    with pytest.raises(InputError, match="auto, cpu, cuda"):
        evaluate_script.resolve_device("tpu")
    if not CUDA:
        with pytest.raises(InputError, match="sees no CUDA device"):
            evaluate_script.resolve_device("cuda")
        # Refused before any data is read: one line, exit code 2.
        with caplog.at_level(logging.ERROR, logger="fuseloc.evaluate"):
            assert evaluate_script.main(["--device", "cuda"]) == 2
        assert "sees no CUDA device" in caplog.text
    if not gpu_available():
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="fuseloc.evaluate"):
            assert evaluate_script.main(["--localizer.index.use_gpu", "true"]) == 2
        assert "use_gpu" in caplog.text


# ------------------------------------------------------------------------------------------------- on a GPU


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("cls", [StrictFixedFusion, StrictLearnedFusion])
def test_cuda_fused_map_and_localizer_equal_cpu(tmp_path, cls):
    toy = make_toy_scene(tmp_path)
    cache = FeatureCache(toy.local_path, toy.global_path)
    cpu = _fitted(cls, cache, toy.scene.image_names)
    cuda = _fitted(cls, cache, toy.scene.image_names).cuda()
    cpu_map = build_fused_map(toy.scene, cache, cpu, feature_tag="toy", progress=False)
    cuda_map = build_fused_map(toy.scene, cache, cuda, feature_tag="toy", progress=False)
    np.testing.assert_allclose(cuda_map.descriptors.astype(np.float32), cpu_map.descriptors.astype(np.float32), atol=2e-3)
    config = LocalizerConfig(min_inliers=10)
    ref = localize_queries(Localizer(cpu_map, config, cpu), toy.queries, cache, progress=False)
    got = localize_queries(Localizer(cuda_map, config, cuda), toy.queries, cache, progress=False)
    for name in toy.queries.names:
        assert got[name].success
        np.testing.assert_allclose(got[name].pose.t, ref[name].pose.t, atol=1e-3)
    cache.close()


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="needs faiss-gpu and a CUDA device")
def test_localizer_with_a_faiss_gpu_index_equals_cpu(tmp_path):
    toy = make_toy_scene(tmp_path)
    cache = FeatureCache(toy.local_path, toy.global_path)
    fusion = _fitted(FixedFusion, cache, toy.scene.image_names, lam=0.5)
    fused = build_fused_map(toy.scene, cache, fusion, feature_tag="toy", progress=False)
    for kind in ("flat", "ivf"):
        index = IndexConfig(kind=kind, nlist=8, nprobe=8)
        cpu = localize_queries(Localizer(fused, LocalizerConfig(min_inliers=10, index=index), fusion), toy.queries, cache,
                               progress=False)
        gpu_localizer = Localizer(fused, LocalizerConfig(min_inliers=10, index=replace(index, use_gpu=True)), fusion)
        assert gpu_localizer.index.on_gpu
        gpu = localize_queries(gpu_localizer, toy.queries, cache, progress=False)
        for name in toy.queries.names:
            assert gpu[name].num_matches == cpu[name].num_matches and gpu[name].success
    cache.close()


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_fast_dev_run_on_gpu_goes_through_the_validation_callback(tmp_path):
    dm = FuseLocDataModule(reader=ToyReader(tmp_path / "toy" / "cache"), local_features=ToyExtractor(),
                           global_features=Vlad(num_clusters=4), output_dir=tmp_path, holdout_every=3, conditions=[],
                           confuser_min_distance=2.0, batches=BatchConfig(points_per_batch=16, batches_per_epoch=2))
    model = FuseLocModule(StrictLearnedFusion(dm.local_dim, dm.global_dim))
    trainer = pl.Trainer(accelerator="gpu", devices=1, fast_dev_run=True, callbacks=[LocalizationValidation()],
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, dm)
    assert float(trainer.callback_metrics["val/toy/all/recall_0.25m_2deg"]) == 100.0


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_train_cli_fast_dev_run_on_gpu(tmp_path):
    out = tmp_path / "run"
    config = tmp_path / "gpu.yaml"
    config.write_text(f"""
{toy_data_yaml(out)}""")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(REPO / "train.py"), "fit", "--config", str(config),
                           "--trainer.accelerator", "gpu", "--trainer.devices", "1", "--trainer.fast_dev_run", "true"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_evaluate_with_the_fusion_on_cuda_equals_cpu(tmp_path):
    evaluate_script = load_script("evaluate")
    localizer = LocalizerConfig(index=IndexConfig(use_gpu=gpu_available()))
    runs = {device: evaluate_script.evaluate(
                data=DataConfig(reader=ToyReader(tmp_path / device / "toy" / "cache"), local_features=ToyExtractor(),
                                global_features=Vlad(num_clusters=4), output_dir=tmp_path / device),
                lambdas=[0.5], localizer=localizer, progress=False, device=device)
            for device in ("cpu", "cuda")}
    cpu, cuda = runs["cpu"], runs["cuda"]
    assert cuda[0].summary["all"] == cpu[0].summary["all"]
