"""The one cache-key recipe and staleness policy (fuseloc.cachekeys)."""

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest

from fuseloc.cachekeys import (
    KEY_LENGTH,
    array_digest,
    canonical_json,
    file_stamp,
    key_of,
    keyed_name,
    read_keyed,
    same_inputs,
    stamp_matches,
)


def test_keys_are_short_hex_and_stable_across_dict_order():
    a = {"lam": 0.5, "names": ["a", "b"], "nested": {"x": 1, "y": (2, 3)}}
    b = {"nested": {"y": [2, 3], "x": 1}, "names": ["a", "b"], "lam": 0.5}
    assert key_of(a) == key_of(b)
    assert len(key_of(a)) == KEY_LENGTH and int(key_of(a), 16) >= 0


def test_the_recipe_is_sha1_of_sorted_json():
    # Stated, not incidental: towns generated before the recipe moved here keep their directory (and no re-render).
    obj = {"config": {"seed": 0, "yaws": [45.0, -45.0]}, "generator_version": 2}
    assert key_of(obj) == hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:KEY_LENGTH]


def test_different_inputs_give_different_keys():
    base = {"lam": 0.5, "names": ["a", "b"]}
    others = [{"lam": 0.4, "names": ["a", "b"]}, {"lam": 0.5, "names": ["b", "a"]}, {"lam": 0.5},
              {"lam": 0.5, "names": ["a", "b"], "extra": None}, [0.5, ["a", "b"]]]
    keys = {key_of(base), *(key_of(o) for o in others)}
    assert len(keys) == 1 + len(others)


def test_arrays_are_keyed_by_content_dtype_and_shape():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert array_digest(x) == array_digest(x.copy()) == array_digest(np.asfortranarray(x))
    assert array_digest(x[:, ::2]) == array_digest(np.ascontiguousarray(x[:, ::2]))  # views by content
    assert len(array_digest(x)) == KEY_LENGTH
    moved = x.copy()
    moved[1, 2] += 1e-3
    assert len({array_digest(x), array_digest(moved), array_digest(x.astype(np.float64)),
                array_digest(x.reshape(4, 3)), array_digest(x.reshape(-1))}) == 5
    # inside a key, an array stands for its digest: the same content gives the same key
    assert key_of({"poses": x}) == key_of({"poses": x.copy()}) == key_of({"poses": array_digest(x)})
    assert key_of({"poses": x}) != key_of({"poses": moved})


def test_canonical_json_takes_numpy_scalars_and_paths_but_refuses_objects():
    assert canonical_json({"b": np.float32(0.5), "a": Path("x/y")}) == '{"a": "x/y", "b": 0.5}'
    with pytest.raises(TypeError, match="cannot be part of a cache key"):
        key_of({"model": object()})


def test_keyed_name():
    assert keyed_name("map", "0123abcd4567", ".h5") == "map-0123abcd4567.h5"
    assert keyed_name("synthetic-town", "0123abcd4567") == "synthetic-town-0123abcd4567"


def test_file_stamp_follows_size_and_modification_time(tmp_path):
    path = tmp_path / "image.png"
    path.write_bytes(b"abc")
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    assert file_stamp(path) == "3-1000000000"
    os.utime(path, ns=(1_000_000_000, 2_000_000_000))
    assert file_stamp(path) == "3-2000000000"
    path.write_bytes(b"abcd")
    os.utime(path, ns=(1_000_000_000, 2_000_000_000))
    assert file_stamp(path) == "4-2000000000"


def test_an_entry_is_stale_only_when_both_stamps_are_known_and_differ():
    assert stamp_matches("3-1", "3-1")
    assert not stamp_matches("3-1", "3-2")
    assert stamp_matches(None, "3-1")  # hloc's entries carry no stamp: trusted
    assert stamp_matches("3-1", None)  # the source cannot be stamped now (image gone): kept


def test_recorded_inputs_are_compared_as_json_stores_them():
    current = {"localizer": {"k": 3, "ratio": (0.8, 0.9)}, "map": "abc", "scores": {1: 0.5}}
    assert same_inputs({"map": "abc", "scores": {"1": 0.5}, "localizer": {"ratio": [0.8, 0.9], "k": 3}}, current)
    assert not same_inputs({"map": "abd", "scores": {"1": 0.5}, "localizer": {"ratio": [0.8, 0.9], "k": 3}}, current)
    assert not same_inputs({"map": "abc"}, current)


def test_a_damaged_derived_file_is_reported_and_handed_back_for_a_rebuild(tmp_path, caplog):
    path = tmp_path / keyed_name("sfm", key_of({"a": 1}), ".npz")
    log = logging.getLogger("fuseloc.test_cachekeys")
    assert read_keyed(path, np.load, (ValueError,), "triangulated map", log) is None  # absent: build it, silently
    np.save(path.with_suffix(".npy"), np.arange(3))
    good = path.with_suffix(".npy")
    assert read_keyed(good, np.load, (ValueError,), "array", log).tolist() == [0, 1, 2]
    good.write_bytes(good.read_bytes()[:20])  # truncated
    with caplog.at_level(logging.WARNING, logger="fuseloc.test_cachekeys"):
        assert read_keyed(good, np.load, (ValueError, OSError, EOFError), "array", log) is None
    assert f"array {good} is unreadable" in caplog.text and "rebuilding it" in caplog.text
    assert caplog.records[0].name == "fuseloc.test_cachekeys"  # on the caller's logger


def test_errors_outside_the_damage_list_are_not_hidden(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(b"x")

    def broken(_: Path):
        raise TypeError("a bug, not damage")

    with pytest.raises(TypeError, match="a bug"):
        read_keyed(path, broken, (ValueError,), "thing", logging.getLogger(__name__))


def test_a_truncated_fused_map_is_rebuilt_under_the_same_name(toy_scene, tmp_path, caplog):
    from fuseloc.data.feature_cache import FeatureCache
    from fuseloc.data.prepare import PreparedFeatures
    from fuseloc.eval.runner import fit_fusion, prepare_map
    from fuseloc.models.fusion import FixedFusion

    with FeatureCache(toy_scene.local_path, toy_scene.global_path) as cache:
        features = PreparedFeatures(cache, "toy", "toy-global")
        fusion = fit_fusion(FixedFusion(32, 16, lam=0.5, reduction="gaussian"), toy_scene.scene, features)
        built = prepare_map(toy_scene.scene, features, fusion, tmp_path / "cache", progress=False)
        (path,) = (tmp_path / "cache").iterdir()
        assert path.name == keyed_name("map", built.config["key"], ".h5")
        path.write_bytes(path.read_bytes()[:200])
        with caplog.at_level(logging.WARNING, logger="fuseloc.eval.runner"):
            rebuilt = prepare_map(toy_scene.scene, features, fusion, tmp_path / "cache", progress=False)
        assert f"fused map {path} is unreadable" in caplog.text
        assert sorted((tmp_path / "cache").iterdir()) == [path] and path.stat().st_size > 200
        np.testing.assert_array_equal(rebuilt.descriptors, built.descriptors)
        other = fit_fusion(FixedFusion(32, 16, lam=0.4, reduction="gaussian"), toy_scene.scene, features)
        prepare_map(toy_scene.scene, features, other, tmp_path / "cache", progress=False)
        assert len(list((tmp_path / "cache").iterdir())) == 2  # another input: another file, the first one kept
