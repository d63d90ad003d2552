import h5py
import numpy as np
import pytest

from fuseloc.data.extract import extract_local_features
from fuseloc.data.extractors import Sift, Vlad
from fuseloc.data.feature_cache import FeatureCache, read_local, write_local
from fuseloc.errors import InputError
from fuseloc.types import LocalFeatures


def _features(n=5, d=8):
    rng = np.random.default_rng(0)
    return LocalFeatures(rng.uniform(0, 100, (n, 2)).astype(np.float32), rng.standard_normal((n, d)).astype(np.float32),
                         rng.random(n).astype(np.float32), (120, 100))


def test_hloc_layout_and_pixel_convention(tmp_path):
    f = _features()
    with h5py.File(tmp_path / "f.h5", "w") as h:
        write_local(h, "db/1.jpg", f)
    with h5py.File(tmp_path / "f.h5", "r") as h:
        group = h["db"]["1.jpg"]  # nested groups, as hloc writes relative paths
        assert group["descriptors"].shape == (8, 5)  # D x N
        np.testing.assert_allclose(group["keypoints"][()], f.keypoints - 0.5)  # hloc: pixel centre at 0
        assert tuple(group["image_size"][()]) == (120, 100)
        back = read_local(h, "db/1.jpg")
    np.testing.assert_allclose(back.keypoints, f.keypoints)
    np.testing.assert_allclose(back.descriptors, f.descriptors)


def test_nan_descriptors_are_rejected(tmp_path):
    f = _features()
    f.descriptors[2, 3] = np.nan
    with h5py.File(tmp_path / "f.h5", "w") as h:
        write_local(h, "a.jpg", f)
    with pytest.raises(InputError, match="NaN"):
        FeatureCache(tmp_path / "f.h5").local("a.jpg")


def _write_image(path, seed=0):
    import cv2
    from skimage import data

    img = data.astronaut()[::2, ::2]
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.roll(img, seed * 7, axis=1)[:, :, ::-1])


def test_extraction_skips_existing_and_refuses_other_config(tmp_path):
    for i in range(2):
        _write_image(tmp_path / "images" / f"{i}.png", i)
    out = tmp_path / "feats.h5"
    sift = Sift(max_keypoints=300)
    extract_local_features(sift, tmp_path / "images", ["0.png"], out, progress=False)
    with h5py.File(out, "r") as h:
        first = h["0.png"]["descriptors"][()]
    extract_local_features(sift, tmp_path / "images", ["0.png", "1.png"], out, progress=False)
    with h5py.File(out, "r") as h:
        assert set(h.keys()) == {"0.png", "1.png"}
        np.testing.assert_array_equal(h["0.png"]["descriptors"][()], first)
        assert h["0.png"]["descriptors"].shape[0] == 128
        assert 0 < h["0.png"]["keypoints"].shape[0] <= 300
    with pytest.raises(InputError, match="another configuration"):
        extract_local_features(Sift(max_keypoints=100), tmp_path / "images", ["0.png"], out, progress=False)


def test_sift_keypoints_in_original_resolution(tmp_path):
    from skimage import data

    img = data.astronaut()
    full = Sift(max_keypoints=500, resize_max=0)(img)
    half = Sift(max_keypoints=500, resize_max=256)(img)
    assert half.image_size == (512, 512)
    assert half.keypoints.max() > 300  # scaled back up to the 512 px original
    np.testing.assert_allclose(np.linalg.norm(full.descriptors, axis=1), 1, atol=1e-5)  # RootSIFT


def test_missing_image_names_the_file(tmp_path):
    with pytest.raises(InputError) as info:
        extract_local_features(Sift(), tmp_path, ["missing.png"], tmp_path / "f.h5", progress=False)
    assert str(info.value) == f"{tmp_path / 'missing.png'}: image not found"


def test_vlad_against_naive_reference():
    rng = np.random.default_rng(0)
    vlad = Vlad(num_clusters=3)
    vlad.centroids = rng.standard_normal((3, 4)).astype(np.float32)
    desc = rng.standard_normal((10, 4)).astype(np.float32)
    residuals = np.zeros((3, 4))
    for x in desc:
        k = int(np.argmin([np.sum((x - c) ** 2) for c in vlad.centroids]))
        residuals[k] += x - vlad.centroids[k]
    for k in range(3):
        n = np.linalg.norm(residuals[k])
        if n > 0:
            residuals[k] /= n
    v = residuals.reshape(-1)
    v = np.sign(v) * np.sqrt(np.abs(v))
    v /= np.linalg.norm(v)
    np.testing.assert_allclose(vlad(desc), v, atol=1e-5)


def test_changed_image_on_disk_is_extracted_again(tmp_path):
    import os

    _write_image(tmp_path / "images" / "0.png", 0)
    out = tmp_path / "feats.h5"
    extract_local_features(Sift(max_keypoints=200), tmp_path / "images", ["0.png"], out, progress=False)
    with h5py.File(out, "r") as h:
        before = h["0.png"]["keypoints"][()]
    _write_image(tmp_path / "images" / "0.png", 3)  # same name, other content
    os.utime(tmp_path / "images" / "0.png", ns=(1, 1))
    extract_local_features(Sift(max_keypoints=200), tmp_path / "images", ["0.png"], out, progress=False)
    with h5py.File(out, "r") as h:
        after = h["0.png"]["keypoints"][()]
    assert before.shape != after.shape or not np.allclose(before, after)
