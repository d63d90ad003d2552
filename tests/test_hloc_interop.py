"""hloc interoperability: fuseloc localizes from feature files laid out by hloc, and hloc can read ours.

hloc's layout (``hloc/extract_features.py``, ``hloc/utils/io.py``): one group per relative image name, nested
by path (``db/0.png`` is group ``0.png`` inside group ``db``); ``keypoints`` (N, 2) with the top-left pixel
centre at (0, 0), ``descriptors`` (D, N), ``scores`` (N,), ``image_size`` (W, H); with ``as_half`` every
float32 array, keypoints included, is stored as float16. Global files hold ``global_descriptor`` (G,).
hloc lists image names as the parent group of every dataset in a file.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from fixtures.toy import make_toy_scene

from fuseloc.data.extract import extract_global_features
from fuseloc.data.extractors import Sift, Vlad
from fuseloc.data.feature_cache import FeatureCache, write_local
from fuseloc.data.prepare import prepare_features
from fuseloc.data.readers.base import BenchmarkSpec, LocalizationData
from fuseloc.errors import InputError
from fuseloc.eval.runner import run_method
from fuseloc.localize.pipeline import LocalizerConfig
from fuseloc.models.fusion import FixedFusion


def hloc_list_h5_names(path: Path) -> list[str]:
    """What hloc's ``list_h5_names`` returns: the parent group name of every dataset."""
    names = []
    with h5py.File(path, "r", libver="latest") as fd:

        def visit(_: str, obj: h5py.HLObject) -> None:
            if isinstance(obj, h5py.Dataset):
                names.append(obj.parent.name.strip("/"))

        fd.visititems(visit)
    return sorted(set(names))


def write_as_hloc(toy, tmp_path: Path) -> tuple[Path, Path]:
    """Copy the toy scene's features into files built group by group the way hloc writes them."""
    local_path, global_path = tmp_path / "feats-superpoint-n4096-r1024.h5", tmp_path / "global-feats-netvlad.h5"
    source = FeatureCache(toy.local_path, toy.global_path)
    names = [*toy.scene.image_names, *toy.queries.names]
    with h5py.File(local_path, "w", libver="latest") as lf, h5py.File(global_path, "w", libver="latest") as gf:
        for name in names:
            feats = source.local(name)
            folder, file = name.split("/")
            group = lf.require_group(folder).create_group(file)
            kp = group.create_dataset("keypoints", data=(feats.keypoints - 0.5).astype(np.float16))
            kp.attrs["uncertainty"] = 1.0
            group.create_dataset("descriptors", data=feats.descriptors.T.astype(np.float16))
            group.create_dataset("scores", data=feats.scores.astype(np.float16))
            group.create_dataset("image_size", data=np.array(feats.image_size))
            gf.require_group(folder).create_group(file).create_dataset(
                "global_descriptor", data=source.global_descriptor(name).astype(np.float16))
    source.close()
    return local_path, global_path


def test_localize_from_hand_written_hloc_files(tmp_path):
    toy = make_toy_scene(tmp_path)
    local_path, global_path = write_as_hloc(toy, tmp_path)
    assert "db" in h5py.File(local_path, "r") and isinstance(h5py.File(local_path, "r")["db"], h5py.Group)
    data = LocalizationData(toy.scene, toy.queries, BenchmarkSpec("toy"), tmp_path)
    features = prepare_features(data, Sift(), Vlad(), tmp_path / "cache", progress=False,
                                local_path=local_path, global_path=global_path)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").glob("feats-*"))  # nothing re-extracted
    # float16 keypoints in hloc's convention come back in COLMAP's, within float16 rounding
    ours = FeatureCache(toy.local_path).local(toy.queries.names[0])
    theirs = features.cache.local(toy.queries.names[0])
    np.testing.assert_allclose(theirs.keypoints, ours.keypoints, atol=0.2)
    assert theirs.descriptors.shape == ours.descriptors.shape and theirs.image_size == ours.image_size
    outcome = run_method("fused", FixedFusion(32, 16, lam=0.5), toy.scene, data, features,
                         LocalizerConfig(min_inliers=10), tmp_path / "cache", tmp_path / "out", progress=False)
    assert outcome.summary["all"]["recall_0.25m_2deg"] == 100.0
    features.cache.close()


def test_missing_image_in_hloc_file_is_named(tmp_path):
    toy = make_toy_scene(tmp_path, num_points=100)
    local_path, global_path = write_as_hloc(toy, tmp_path)
    with h5py.File(local_path, "a") as f:
        del f["query/1.png"]
    data = LocalizationData(toy.scene, toy.queries, BenchmarkSpec("toy"), tmp_path)
    with pytest.raises(InputError, match=r"feats-superpoint.*1 of 9 images have no local features.*'query/1.png'"):
        prepare_features(data, Sift(), Vlad(), tmp_path / "cache", progress=False, local_path=local_path,
                         global_path=global_path)


def test_our_files_read_like_hloc_files(tmp_path):
    """Files fuseloc writes (local, and VLAD with its vocabulary) list exactly the image names under hloc's rules."""
    toy = make_toy_scene(tmp_path, num_points=200)
    names = [*toy.scene.image_names, *toy.queries.names]
    out = tmp_path / "feats-ours.h5"
    cache = FeatureCache(toy.local_path)
    with h5py.File(out, "w") as f:
        for name in names:
            write_local(f, name, cache.local(name))
    assert hloc_list_h5_names(out) == sorted(names)
    with h5py.File(out, "r") as f:
        group = f[names[0]]
        assert set(group) == {"keypoints", "descriptors", "scores", "image_size"}  # hloc's matchers load every dataset
        assert group["descriptors"].shape[0] == 32  # D x N
        np.testing.assert_allclose(group["keypoints"][()] + 0.5, cache.local(names[0]).keypoints)
    glob = extract_global_features(Vlad(num_clusters=4), names, tmp_path / "global-feats-vlad.h5",
                                   local_path=toy.local_path, train_names=toy.scene.image_names, progress=False)
    assert hloc_list_h5_names(glob) == sorted(names)  # the vocabulary is not mistaken for an image
    with h5py.File(glob, "r") as f:
        assert f[names[0]]["global_descriptor"].shape == (4 * 32,)
