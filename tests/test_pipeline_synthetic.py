"""Cache -> fuse -> faiss -> poselib -> metrics on a toy scene with known poses (about a second)."""

import numpy as np
import pytest
from fixtures.toy import make_toy_scene

from fuseloc.data.feature_cache import FeatureCache
from fuseloc.data.readers.base import BenchmarkSpec
from fuseloc.errors import InputError
from fuseloc.eval.metrics import evaluate_results, pose_errors
from fuseloc.localize.fused_map import FusedMap, build_fused_map
from fuseloc.localize.pipeline import Localizer, LocalizerConfig, localize_queries
from fuseloc.models.fusion import FixedFusion


def _localize(toy, lam, tmp_path=None):
    cache = FeatureCache(toy.local_path, toy.global_path)
    fusion = FixedFusion(32, 16, lam=lam)
    fusion.fit(cache.global_descriptors(toy.scene.image_names))
    fused = build_fused_map(toy.scene, cache, fusion, feature_tag="toy", progress=False)
    if tmp_path is not None:
        fused = FusedMap.load(fused.save(tmp_path / "map.h5"))
    results = localize_queries(Localizer(fused, LocalizerConfig(min_inliers=10)), toy.queries, cache, progress=False)
    return fused, results


def test_end_to_end_recovers_known_poses(tmp_path):
    toy = make_toy_scene(tmp_path)
    fused, results = _localize(toy, lam=0.5, tmp_path=tmp_path)
    assert fused.descriptors.dtype == np.float16
    for name, truth in zip(toy.queries.names, toy.queries.gt_poses):
        assert results[name].success
        dt, dr = pose_errors(results[name].pose, truth)
        assert dt < 0.01 and dr < 0.1, (name, dt, dr)
    summary = evaluate_results(results, toy.queries, BenchmarkSpec("toy"))
    assert summary["all"]["recall_0.25m_2deg"] == 100.0
    assert set(summary) == {"all", "left", "right"}


def test_map_descriptor_is_mean_of_fused_observations(tmp_path):
    toy = make_toy_scene(tmp_path, num_points=60)
    cache = FeatureCache(toy.local_path, toy.global_path)
    fusion = FixedFusion(32, 16, lam=0.4)
    fusion.fit(cache.global_descriptors(toy.scene.image_names))
    fused = build_fused_map(toy.scene, cache, fusion, feature_tag="toy", progress=False)
    import torch

    point = int(np.bincount(toy.scene.obs_point).argmax())
    expected = []
    for image, p, kp in zip(toy.scene.obs_image, toy.scene.obs_point, toy.scene.obs_keypoint):
        if p == point:
            name = toy.scene.image_names[image]
            local = torch.from_numpy(cache.local(name).descriptors[kp][None])
            glob = torch.from_numpy(cache.global_descriptor(name)[None])
            expected.append(fusion(local, glob)[0].numpy())
    row = int(np.flatnonzero(np.all(fused.points_xyz == toy.scene.points_xyz[point], axis=1))[0])
    np.testing.assert_allclose(fused.descriptors[row].astype(np.float32), np.mean(expected, 0), atol=2e-3)


def test_radius_association_matches_index_association(tmp_path):
    toy = make_toy_scene(tmp_path, num_points=100)
    cache = FeatureCache(toy.local_path, toy.global_path)
    fusion = FixedFusion(32, 16, lam=0.5)
    fusion.fit(cache.global_descriptors(toy.scene.image_names))
    by_index = build_fused_map(toy.scene, cache, fusion, association="index", progress=False)
    by_radius = build_fused_map(toy.scene, cache, fusion, association="radius", radius=0.5, progress=False)
    np.testing.assert_array_equal(by_index.descriptors, by_radius.descriptors)


def test_fusion_disambiguates_duplicated_structures(tmp_path):
    """Half of the right wall copies left-wall descriptors: fusing cuts wrong matches."""
    toy = make_toy_scene(tmp_path, num_points=600, duplicate_fraction=0.9, descriptor_noise=0.02)
    _, local_only = _localize(toy, lam=1.0)
    _, fused = _localize(toy, lam=0.5)
    inliers_local = sum(r.num_inliers for r in local_only.values())
    inliers_fused = sum(r.num_inliers for r in fused.values())
    assert inliers_fused > 1.3 * inliers_local


def test_dimension_mismatch_is_a_clear_error(tmp_path):
    toy = make_toy_scene(tmp_path)
    cache = FeatureCache(toy.local_path, toy.global_path)
    with pytest.raises(InputError, match="dimension mismatch"):
        build_fused_map(toy.scene, cache, FixedFusion(64, 16, lam=0.5), progress=False)


def test_failed_query_gets_fallback_pose(tmp_path):
    toy = make_toy_scene(tmp_path)
    cache = FeatureCache(toy.local_path, toy.global_path)
    fusion = FixedFusion(32, 16, lam=0.5)
    fusion.fit(cache.global_descriptors(toy.scene.image_names))
    fused = build_fused_map(toy.scene, cache, fusion, progress=False)
    results = localize_queries(Localizer(fused, LocalizerConfig(min_inliers=10_000)), toy.queries, cache, progress=False)
    for r in results.values():
        assert not r.success and "inliers" in r.reason
        assert any(np.allclose(r.pose.t, t) for t in toy.scene.t_cam_from_world)


@pytest.mark.parametrize("association", ["index", "radius"])
def test_map_fused_from_training_correspondences_equals_the_map_read_from_the_cache(tmp_path, association):
    from fuseloc.data.correspondences import gather_correspondences

    toy = make_toy_scene(tmp_path)
    cache = FeatureCache(toy.local_path, toy.global_path)
    fusion = FixedFusion(32, 16, lam=0.5)
    fusion.fit(cache.global_descriptors(toy.scene.image_names))
    corr = gather_correspondences(toy.scene, cache, "toy", association=association)
    read = build_fused_map(toy.scene, cache, fusion, association=association, feature_tag="toy", progress=False)
    reused = build_fused_map(toy.scene, cache, fusion, association=association, feature_tag="toy", progress=False,
                             observations=corr.iter_images())
    np.testing.assert_array_equal(reused.descriptors, read.descriptors)
    np.testing.assert_array_equal(reused.points_xyz, read.points_xyz)
