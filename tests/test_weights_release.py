"""Each network's loader on a file laid out as its release: file name, container, key names (random values).

Key names come from our modules' state dicts plus the prefixes and extra entries each release adds; the
containers are the releases' (bare state dict, training checkpoint with numpy metrics, Lightning checkpoint,
safetensors). Small variants of the architectures keep the tests fast. No test touches the network.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from fuseloc.data.extractors import CricaVPR, Disk, EigenPlaces, MegaLoc, MixVPR, NetVLAD, Salad
from fuseloc.data.extractors.base import resized_shape, to_tensor
from fuseloc.data.extractors.cricavpr import CricaVPRNet
from fuseloc.data.extractors.dinov2 import DinoV2
from fuseloc.data.extractors.eigenplaces import EigenPlacesNet
from fuseloc.data.extractors.megaloc import MegaLocNet, round_to_patch
from fuseloc.data.extractors.mixvpr import MixVPRNet
from fuseloc.data.extractors.netvlad import NetVLADNet
from fuseloc.data.extractors.salad import SaladNet
from fuseloc.data.extractors.weights import TRUSTED_WEIGHTS_ENV, load_into, load_state_dict, read_checkpoint
from fuseloc.errors import InputError

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
IMAGE = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)


@pytest.fixture
def caches(tmp_path, monkeypatch):
    """Empty torch hub and Hugging Face caches, so a user's real files never satisfy a test."""
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.delenv(TRUSTED_WEIGHTS_ENV, raising=False)
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    yield tmp_path / "hub" / "checkpoints"
    torch.hub.set_dir(old)


def _randomised(net: torch.nn.Module) -> torch.nn.Module:
    """Random values everywhere, BatchNorm statistics and GeM exponents included, so loading is really checked."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, tensor in net.state_dict().items():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand_like(tensor) * 0.5 + 0.75 if name.endswith(("running_var", ".p"))
                             else torch.randn_like(tensor) * 0.05)
    return net.eval()


def _assert_same_weights(extractor, source: torch.nn.Module) -> None:
    torch.testing.assert_close(extractor.net.state_dict(), source.state_dict(), rtol=0, atol=0)


def _assert_same_descriptor(extractor, source: torch.nn.Module) -> None:
    shape = extractor.fixed_size or resized_shape(*IMAGE.shape[:2], extractor.resize_max)
    with torch.no_grad():
        expected = source(to_tensor([IMAGE], shape, torch.device("cpu")))[0].numpy()
    np.testing.assert_allclose(extractor.describe(IMAGE), expected, atol=1e-5)


# --- the shared reader: numpy metrics allowed, anything else refused -------------------------------------


def test_numpy_metrics_of_training_checkpoints_load_under_numpy_1_and_2_names(tmp_path):
    ckpt = {"state_dict": {"w": torch.ones(2)}, "best_score": np.float64(0.948), "recalls": {1: np.float64(0.85)},
            "curve": np.arange(4, dtype=np.float64), "steps": np.int64(7)}
    buffer = io.BytesIO()
    torch.save(ckpt, buffer, _use_new_zipfile_serialization=False)  # a plain pickle stream, names readable
    data = buffer.getvalue()
    assert b"numpy._core.multiarray\nscalar" in data  # what numpy 2 writes
    numpy1 = data.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")  # what numpy 1.x writes
    for name, payload in (("numpy2.pth", data), ("numpy1.pth", numpy1)):
        (tmp_path / name).write_bytes(payload)
        loaded = read_checkpoint(tmp_path / name, "X")
        assert loaded["best_score"] == np.float64(0.948) and type(loaded["best_score"]) is np.float64
        assert loaded["recalls"] == {1: 0.85} and loaded["steps"] == 7
        np.testing.assert_array_equal(loaded["curve"], np.arange(4.0))
        torch.testing.assert_close(load_state_dict(tmp_path / name, "X")["w"], torch.ones(2))


def test_an_arbitrary_class_is_refused_unless_the_file_is_trusted(tmp_path, monkeypatch):
    monkeypatch.delenv(TRUSTED_WEIGHTS_ENV, raising=False)
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"state_dict": {"w": torch.ones(2)}, "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(InputError) as err:
        load_state_dict(path, "NetVLAD")
    message = str(err.value)
    assert str(path) in message and "argparse.Namespace" in message and TRUSTED_WEIGHTS_ENV in message
    assert "\n" not in message
    monkeypatch.setenv(TRUSTED_WEIGHTS_ENV, str(tmp_path / "other.pth"))  # trusting another file changes nothing
    with pytest.raises(InputError, match="refused for safety"):
        load_state_dict(path, "NetVLAD")
    monkeypatch.setenv(TRUSTED_WEIGHTS_ENV, str(path))
    torch.testing.assert_close(load_state_dict(path, "NetVLAD")["w"], torch.ones(2))


def test_numpy_object_arrays_are_refused(tmp_path, monkeypatch):
    monkeypatch.delenv(TRUSTED_WEIGHTS_ENV, raising=False)
    path = tmp_path / "x.pth"
    torch.save({"state_dict": {"w": torch.ones(1)}, "extra": np.array([None, "x"], dtype=object)}, path)
    with pytest.raises(InputError, match="refused for safety.*ObjectDType"):
        read_checkpoint(path, "X")


def test_corrupt_files_are_one_clear_error(tmp_path):
    for name in ("model.safetensors", "checkpoint.pth.tar"):
        (tmp_path / name).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
        with pytest.raises(InputError, match=f"{name}: cannot read MegaLoc weights"):
            load_state_dict(tmp_path / name, "MegaLoc")


# --- global networks --------------------------------------------------------------------------------------


def _hf_snapshot(root: Path, repo: str, filename: str, revision: str = "0123abcd") -> Path:
    """Where ``hf_hub_download`` puts a file: ``models--<org>--<name>/snapshots/<rev>/<file>``, ``refs/main``."""
    repo_dir = root / ("models--" + repo.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(revision)
    (repo_dir / "snapshots" / revision).mkdir(parents=True)
    return repo_dir / "snapshots" / revision / filename


MEGALOC_TINY = {"dim": 32, "depth": 2, "heads": 2, "num_clusters": 4, "cluster_dim": 8, "token_dim": 16, "out_dim": 24}


def test_megaloc_loads_model_safetensors_from_the_huggingface_cache(caches, tmp_path):
    source = _randomised(MegaLocNet(**MEGALOC_TINY))
    state = source.state_dict()
    assert "backbone.cls_token" in state and "aggregator.agg.dust_bin" in state and "aggregator.linear.weight" in state
    assert not any("mask_token" in k or k.startswith("backbone.model.") for k in state)  # the release's layout
    path = _hf_snapshot(tmp_path / "hf", "gberton/MegaLoc", "model.safetensors")
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    megaloc = MegaLoc(resize_max=64, **MEGALOC_TINY)
    assert megaloc._weights_path == path
    _assert_same_weights(megaloc, source)
    _assert_same_descriptor(megaloc, source)


def test_megaloc_still_loads_the_first_release_layout(caches):
    source = _randomised(MegaLocNet(**MEGALOC_TINY))
    # megaloc.torch: torch.hub's DINOv2 wrapped as backbone.model.*, with its mask_token; a bare state dict
    legacy = {k.replace("backbone.", "backbone.model.", 1) if k.startswith("backbone.") else k: v
              for k, v in source.state_dict().items()}
    legacy["backbone.model.mask_token"] = torch.zeros(1, MEGALOC_TINY["dim"])
    torch.save(legacy, caches / "megaloc.torch")
    megaloc = MegaLoc(resize_max=64, **MEGALOC_TINY)
    _assert_same_weights(megaloc, source)


def test_megaloc_missing_weights_name_the_release_file(caches, tmp_path):
    with pytest.raises(InputError) as err:
        MegaLoc()
    message = str(err.value)
    assert "'model.safetensors'" in message and "huggingface.co/gberton/MegaLoc" in message
    assert str(tmp_path / "hf" / "models--gberton--MegaLoc") in message and str(caches / "megaloc.torch") in message


def test_megaloc_preprocesses_as_hloc(caches, tmp_path):
    save_file({k: v.contiguous() for k, v in _randomised(MegaLocNet(**MEGALOC_TINY)).state_dict().items()},
              str(tmp_path / "model.safetensors"))
    megaloc = MegaLoc(weights=str(tmp_path / "model.safetensors"), **MEGALOC_TINY)
    assert megaloc.resize_max == 1024 and megaloc.fixed_size is None and megaloc.tag().endswith("-r1024")
    # hloc: longest side 1024, aspect kept; the model then rounds each side to the *nearest* multiple of 14
    assert resized_shape(3000, 4000, 1024) == (768, 1024)
    assert round_to_patch(768, 1024) == (770, 1022) and round_to_patch(52, 70) == (56, 70)
    net = megaloc.net
    seen = []
    hook = net.backbone.patch_embed.register_forward_pre_hook(lambda _, args: seen.append(tuple(args[0].shape[-2:])))
    megaloc.describe(np.zeros((40, 60, 3), np.uint8))  # below 1024: kept, then 40 -> 42, 60 -> 56
    hook.remove()
    assert seen == [(42, 56)]


def test_eigenplaces_release_file_name_and_layout(caches):
    source = _randomised(EigenPlacesNet(18, 256))
    assert {"backbone.0.weight", "backbone.4.0.conv1.weight", "aggregation.1.p", "aggregation.3.weight"} <= set(source.state_dict())
    torch.save(source.state_dict(), caches / "ResNet18_256_eigenplaces.pth")  # bare, as hubconf.py loads it
    extractor = EigenPlaces(depth=18, fc_output_dim=256, resize_max=64)
    _assert_same_weights(extractor, source)
    _assert_same_descriptor(extractor, source)
    with pytest.raises(InputError, match="'ResNet50_2048_eigenplaces.pth' from github.com/gmberton/EigenPlaces"):
        EigenPlaces()


def _nanne_checkpoint(net: torch.nn.Module, parallel: bool) -> dict:
    """pytorch-NetVlad's save_checkpoint: epoch, state_dict, recalls, best_score (numpy), optimizer, parallel."""
    state = net.state_dict()
    if parallel:  # DataParallel around the encoder and around the pool
        state = {k.replace("encoder.", "encoder.module.", 1).replace("pool.", "pool.module.", 1): v for k, v in state.items()}
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.9, weight_decay=1e-3)
    return {"epoch": 30, "state_dict": state, "recalls": {1: np.float64(0.852), 5: np.float64(0.948)},
            "best_score": np.float64(0.948), "optimizer": optimizer.state_dict(), "parallel": parallel}


@pytest.mark.parametrize("parallel", [False, True])
def test_netvlad_loads_pytorch_netvlad_training_checkpoint(caches, parallel):
    source = _randomised(NetVLADNet(8))
    assert {"encoder.0.weight", "encoder.28.bias", "pool.conv.weight", "pool.centroids"} == {
        k for k in source.state_dict() if k in ("encoder.0.weight", "encoder.28.bias", "pool.conv.weight", "pool.centroids")}
    path = caches / "vgg16_netvlad_checkpoint" / "checkpoints" / "checkpoint.pth.tar"
    path.parent.mkdir(parents=True)
    torch.save(_nanne_checkpoint(source, parallel), path)
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(path, weights_only=True)  # what a plain safe load does with it
    extractor = NetVLAD(num_clusters=8, resize_max=48)
    _assert_same_weights(extractor, source)


def test_netvlad_refuses_hloc_matlab_weights_with_a_message(caches, tmp_path):
    (tmp_path / "Pitts30K_struct.mat").write_bytes(b"MATLAB 5.0 MAT-file")
    with pytest.raises(InputError, match="Pitts30K_struct.mat: NetVLAD: hloc's MATLAB-converted weights"):
        NetVLAD(weights=str(tmp_path / "Pitts30K_struct.mat"))
    with pytest.raises(InputError, match="vgg16_netvlad_checkpoint/checkpoints/checkpoint.pth.tar"):
        NetVLAD()


def test_mixvpr_release_is_a_bare_state_dict_despite_ckpt(caches):
    source = _randomised(MixVPRNet(256, 2, image_size=64))
    keys = set(source.state_dict())
    assert {"backbone.model.conv1.weight", "backbone.model.layer3.5.bn3.running_var", "aggregator.mix.0.mix.1.weight",
            "aggregator.channel_proj.weight", "aggregator.row_proj.bias"} <= keys
    assert not any(k.startswith(("backbone.model.layer4", "backbone.model.fc")) for k in keys)
    torch.save(source.state_dict(), caches / "resnet50_MixVPR_512_channels(256)_rows(2).ckpt")
    extractor = MixVPR(out_channels=256, out_rows=2, image_size=64)
    _assert_same_weights(extractor, source)


SALAD_TINY = {"dim": 32, "depth": 2, "heads": 2, "num_clusters": 4, "cluster_dim": 8, "token_dim": 16}


@pytest.mark.parametrize("container", ["bare", "lightning"])
def test_salad_dino_salad_ckpt(caches, container):
    source = _randomised(SaladNet(**SALAD_TINY))
    state = source.state_dict()
    assert {"backbone.model.mask_token", "backbone.model.blocks.1.ls2.gamma", "aggregator.dust_bin",
            "aggregator.score.3.weight"} <= set(state)
    if container == "lightning":  # a training checkpoint of the Lightning VPRModel
        state = {"epoch": 3, "global_step": 100, "pytorch-lightning_version": "2.1.0", "state_dict": state,
                 "loops": {}, "callbacks": {}, "optimizer_states": [], "lr_schedulers": [],
                 "hyper_parameters": {"agg_arch": "SALAD", "agg_config": {"num_clusters": 64}}}
    torch.save(state, caches / "dino_salad.ckpt")
    extractor = Salad(image_size=56, **SALAD_TINY)
    _assert_same_weights(extractor, source)


def test_cricavpr_training_checkpoint_with_numpy_recalls(caches):
    source = _randomised(CricaVPRNet(32, 2, 2, train_size=70, encoder_heads=2, encoder_ffn=16))
    torch.save({"epoch_num": 10, "model_state_dict": {f"module.{k}": v for k, v in source.state_dict().items()},
                "optimizer_state_dict": torch.optim.Adam(source.parameters(), lr=1e-5).state_dict(),
                "recalls": np.array([94.9, 97.5, 98.1]), "best_r5": np.float64(97.5), "not_improved_num": 0},
               caches / "CricaVPR.pth")
    extractor = CricaVPR(image_size=56, dim=32, depth=2, heads=2, encoder_heads=2, encoder_ffn=16)
    _assert_same_weights(extractor, source)  # the 5 x 5 position grid was read from the file


def test_dinov2_pretrain_layout_loads_into_the_shared_vit(tmp_path):
    source = _randomised(DinoV2(dim=32, depth=2, heads=2, train_size=56))
    keys = set(source.state_dict())
    assert {"cls_token", "pos_embed", "mask_token", "patch_embed.proj.weight", "blocks.1.ls1.gamma", "norm.bias"} <= keys
    torch.save(source.state_dict(), tmp_path / "dinov2_vits14_pretrain.pth")  # bare, like dinov2_vitb14_pretrain.pth
    vit = DinoV2(dim=32, depth=2, heads=2, train_size=56)
    load_into(vit, load_state_dict(tmp_path / "dinov2_vits14_pretrain.pth", "DINOv2"), tmp_path, "DINOv2")
    torch.testing.assert_close(vit.state_dict(), source.state_dict(), rtol=0, atol=0)


def test_a_layout_mismatch_names_the_keys(caches):
    source = _randomised(EigenPlacesNet(18, 256))
    state = {f"module.{k}": v for k, v in source.state_dict().items()}  # an unexpected prefix
    torch.save(state, caches / "ResNet18_256_eigenplaces.pth")
    with pytest.raises(InputError, match=r"do not fit the architecture: \d+ missing \(e.g. backbone.0.weight.*unexpected "
                                         r"\(e.g. module.backbone.0.weight"):
        _ = EigenPlaces(depth=18, fc_output_dim=256).net


# --- local networks ---------------------------------------------------------------------------------------


def test_disk_release_keeps_the_network_under_extractor(tmp_path):
    kornia = pytest.importorskip("kornia.feature")
    source = _randomised(kornia.DISK())
    torch.save({"extractor": source.state_dict()}, tmp_path / "depth-save.pth")
    disk = Disk(weights=str(tmp_path / "depth-save.pth"))
    _assert_same_weights(disk, source)


def test_real_r2d2_release_loads_through_the_shared_helper():
    path = SHARED / "weights" / "r2d2_WASF_N16.pt"
    if not path.is_file():
        pytest.skip(f"shared R2D2 weights not found at {path}")
    from fuseloc.data.extractors.r2d2 import QuadL2NetConfCFS

    checkpoint = read_checkpoint(path, "R2D2")
    assert checkpoint["net"] == "Quad_L2Net_ConfCFS()"  # the release: architecture string + weights
    state = load_state_dict(path, "R2D2")
    assert all(k.startswith("module.") for k in state)
    net = QuadL2NetConfCFS()
    load_into(net, state, path, "R2D2", strip=("module.",))
    torch.testing.assert_close(net.state_dict()["clf.weight"], state["module.clf.weight"])
