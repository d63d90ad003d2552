"""Cross-condition training samples: appended observations, batches that pair conditions, re-rendered images
tied to their source's 3D points, and the DataModule's validation that sees other conditions."""

from __future__ import annotations

import numpy as np
import pytest

from fuseloc.data.correspondences import (
    BatchConfig,
    CorrespondenceBatches,
    Correspondences,
    add_condition_observations,
    same_place_images,
)
from fuseloc.data.cross_condition import ConditionObservations


def _corr(num_points: int = 6, obs_per_point: int = 2, dim: int = 4, gdim: int = 3) -> Correspondences:
    rng = np.random.default_rng(0)
    points = np.repeat(np.arange(num_points), obs_per_point)
    images = np.arange(len(points)) % 3
    order = np.argsort(images, kind="stable")  # as gathered: image by image
    return Correspondences(rng.standard_normal((len(points), dim)).astype(np.float32)[order], points[order],
                           images[order], rng.standard_normal((3, gdim)).astype(np.float32),
                           rng.standard_normal((num_points, 3)), ["a.png", "b.png", "c.png"])


def test_appended_images_keep_the_map_part_and_label_their_conditions():
    corr = _corr()
    night = ConditionObservations("r/night/a.png", "night", np.ones(3, np.float32), np.full((2, 4), 7, np.float32),
                                  np.array([0, 1]))
    empty = ConditionObservations("r/night/b.png", "night", np.ones(3, np.float32), np.zeros((0, 4), np.float32),
                                  np.zeros(0, np.int64))
    dusk = ConditionObservations("r/dusk/a.png", "dusk", np.full(3, 2, np.float32), np.full((1, 4), 9, np.float32),
                                 np.array([5]))
    out = add_condition_observations(corr, [night, empty, dusk])
    assert out.conditions == ("database", "night", "dusk")
    assert out.image_names == ["a.png", "b.png", "c.png", "r/night/a.png", "r/dusk/a.png"]  # the empty one is left out
    assert out.map_images == 3 and out.num_observations == corr.num_observations + 3
    assert out.obs_condition.tolist() == [0] * corr.num_observations + [1, 1, 2]
    np.testing.assert_array_equal(out.global_desc[4], [2, 2, 2])
    # the map (validation's fused map, confuser mining) is built from the database observations only
    before = [(o.image_index, o.points.tolist()) for o in corr.iter_images()]
    assert [(o.image_index, o.points.tolist()) for o in out.iter_images()] == before
    has, means = out.mean_local()
    has0, means0 = corr.mean_local()
    np.testing.assert_array_equal(has, has0)
    np.testing.assert_allclose(means, means0)


def test_each_extra_image_is_paired_with_the_map_image_sharing_most_of_its_points():
    corr = _corr(num_points=6, obs_per_point=3)  # point p is seen by all three map images
    seen = {i: set(corr.obs_point[corr.obs_image == i].tolist()) for i in range(3)}
    assert all(seen[i] == set(range(6)) for i in range(3))
    # make the map images differ: drop image 0's and 2's observations of points 0-3
    keep = ~((np.isin(corr.obs_image, [0, 2])) & (corr.obs_point < 4))
    corr = Correspondences(corr.local[keep], corr.obs_point[keep], corr.obs_image[keep], corr.global_desc,
                           corr.points_xyz, corr.image_names)
    extra = [ConditionObservations("r/night/x.png", "night", np.ones(3, np.float32), np.zeros((3, 4), np.float32),
                                   np.array([0, 1, 4])),  # points 0 and 1: only image 1 sees them
             ConditionObservations("r/dusk/y.png", "dusk", np.ones(3, np.float32), np.zeros((2, 4), np.float32),
                                   np.array([4, 5]))]  # seen by all three: the first of the tie
    out = add_condition_observations(corr, extra)
    assert same_place_images(out).tolist() == [1, 0]
    assert same_place_images(corr).tolist() == []
    # a rendering's known source wins over the shared points
    rendered = ConditionObservations("r/night/z.png", "night", np.ones(3, np.float32), np.zeros((2, 4), np.float32),
                                     np.array([0, 1]), source=2)
    out = add_condition_observations(out, [rendered])
    assert out.image_source.tolist() == [0, 1, 2, -1, -1, 2]
    assert same_place_images(out).tolist() == [1, 0, 2]


def test_batches_pair_each_point_across_conditions():
    corr = _corr(num_points=8, obs_per_point=6)
    extra = [ConditionObservations(f"r/{c}/{p}.png", c, np.zeros(3, np.float32), np.zeros((1, 4), np.float32),
                                   np.array([p])) for p in range(8) for c in ("night", "dusk")]
    out = add_condition_observations(corr, extra)
    batches = CorrespondenceBatches(out, np.full((8, 1), -1), BatchConfig(points_per_batch=8, obs_per_point=3))
    rng = np.random.default_rng(1)
    condition = out.obs_condition
    for _ in range(20):
        for p in range(8):
            obs = np.flatnonzero(out.obs_point == p)
            take = batches.pick_observations(obs, rng)
            # 6 database + 1 night + 1 dusk observations: 3 picks always cover the 3 conditions
            assert len(take) == 3 and len(set(condition[take].tolist())) == 3
            assert len(set(take.tolist())) == 3
    # a point seen under one condition only still gets M distinct observations
    single = CorrespondenceBatches(corr, np.full((8, 1), -1), BatchConfig(points_per_batch=8, obs_per_point=3))
    take = single.pick_observations(np.flatnonzero(corr.obs_point == 0), rng)
    assert len(set(take.tolist())) == 3


@pytest.mark.parametrize("warp", [0.0, 0.04])
def test_rendered_observations_land_on_their_source_points(tmp_path, warp):
    """Re-render a database image (known warp), extract on it, tie through the homography: each tied keypoint
    carries the 3D point of the source observation it came from."""
    import cv2

    from fuseloc.data.conditions import ConditionTransform
    from fuseloc.data.cross_condition import render_database, rendered_observations
    from fuseloc.data.extract import extract_local_features
    from fuseloc.data.extractors import Sift
    from fuseloc.data.feature_cache import FeatureCache
    from fuseloc.data.scene import Scene
    from fuseloc.types import Camera

    skimage_data = pytest.importorskip("skimage.data")
    image = cv2.resize(skimage_data.astronaut(), (320, 320))
    (tmp_path / "db").mkdir()
    cv2.imwrite(str(tmp_path / "db" / "a.png"), image[:, :, ::-1])
    sift = Sift(max_keypoints=300)
    feats = extract_local_features(sift, tmp_path, ["db/a.png"], tmp_path / "feats.h5", progress=False)
    with FeatureCache(feats, None) as cache:
        kp = cache.local("db/a.png").keypoints
    n = len(kp)
    camera = Camera("PINHOLE", 320, 320, (300.0, 300.0, 160.0, 160.0))
    scene = Scene(image_names=["db/a.png"], image_cameras=[camera], R_cam_from_world=np.eye(3)[None],
                  t_cam_from_world=np.zeros((1, 3)), points_xyz=np.zeros((n, 3)), obs_image=np.zeros(n, np.int32),
                  obs_point=np.arange(n), obs_xy=kp.astype(np.float32), obs_keypoint=np.arange(n),
                  image_root=tmp_path)
    transform = ConditionTransform(name="bright", kind="exposure", strength=0.3, warp=warp)
    rendered = render_database(scene, [0], [transform], seed=3, cache_dir=tmp_path / "cache")
    assert rendered.queries.names[0].endswith("bright/db/a.png")
    again = render_database(scene, [0], [transform], seed=3, cache_dir=tmp_path / "cache")  # reused, not redrawn
    np.testing.assert_array_equal(again.homography, rendered.homography)
    extract_local_features(sift, tmp_path / "cache", rendered.queries.names, feats, progress=False)
    with FeatureCache(feats, None) as cache:
        # global descriptors are not needed here: patch them in
        cache.global_descriptor = lambda name: np.zeros(1, np.float32)  # type: ignore[method-assign]
        (tied,) = list(rendered_observations(scene, rendered, cache, radius=2.0))
        source = cache.local("db/a.png").descriptors
    assert len(tied.points) > 0.5 * n
    # each tied keypoint describes the structure of the source keypoint whose point it took, not another's
    nearest = np.argmax(tied.descriptors @ source.T, axis=1)
    # (not all: SIFT puts several orientations at one location, and the nearest of them takes the point)
    assert np.mean(nearest == tied.points) > 0.7


def test_datamodule_trains_across_conditions_and_validates_per_condition(tmp_path):
    """Real images (the tiny corner scene), holdout validation: training observations come from the database and
    its re-renderings (each tied to a point its source observes), validation holds the held-out images as they
    are and under each condition, scored per condition."""
    from fixtures.tiny import make_tiny_dataset

    from fuseloc.data.conditions import ConditionTransform
    from fuseloc.data.correspondences import BatchConfig
    from fuseloc.data.datamodule import FuseLocDataModule
    from fuseloc.data.extractors import Sift, Vlad
    from fuseloc.data.readers.generic import GenericReader

    tiny = make_tiny_dataset(tmp_path / "tiny")
    conditions = [ConditionTransform(name="night", kind="night"), ConditionTransform(name="hazy", kind="haze", warp=0.02)]
    dm = FuseLocDataModule(reader=GenericReader(tiny.root), local_features=Sift(max_keypoints=512),
                           global_features=Vlad(num_clusters=4), output_dir=tmp_path / "out", holdout_every=3,
                           conditions=conditions, confuser_min_distance=0.5,
                           batches=BatchConfig(points_per_batch=16, batches_per_epoch=2))
    dm.setup("fit")
    try:
        corr, vs = dm.correspondences, dm.validation_set
        assert corr.conditions[0] == "database" and set(corr.conditions[1:]) == {"night", "hazy"}
        assert corr.map_images == vs.scene.num_images == 4
        observed = {(int(i), int(p)) for i, p in zip(vs.scene.obs_image, vs.scene.obs_point, strict=True)}
        index = vs.scene.image_index()
        extra = ~corr.map_observations()
        assert extra.sum() > 0
        for image, point in zip(corr.obs_image[extra], corr.obs_point[extra], strict=True):
            source = corr.image_names[image].split("/", 2)[2]  # conditions-<key>/<condition>/<database name>
            assert (index[source], int(point)) in observed
        # validation: the 2 held-out images, as they are and under each condition; never a training image
        assert sorted(vs.queries.conditions) == ["hazy"] * 2 + ["night"] * 2 + ["original"] * 2
        sources = {n.split("/", 2)[2] for n in vs.queries.names}
        assert len(sources) == 2 and not sources & set(vs.scene.image_names)
        assert not set(vs.queries.names) & set(tiny.query_names)
        assert vs.spec.splits == {} and vs.spec.split_of("night") == "night"
        batch = next(iter(dm.train_dataloader()))
        assert len(batch["labels"]) > 0
        # each re-rendering is paired with its own source image, and the fusion learns its whitening from them
        partner = same_place_images(corr)
        for image, source in zip(range(corr.map_images, len(corr.image_names)), partner, strict=True):
            assert corr.image_names[image].split("/", 2)[2] == corr.image_names[source]
        from fuseloc.models.fusion import LearnedFusion, pca_projection

        fusion = LearnedFusion(dm.local_dim, dm.global_dim)
        dm.fit_fusion(fusion)
        _, pca = pca_projection(corr.global_desc[: corr.map_images], dm.local_dim)
        assert not np.allclose(fusion.global_projection.detach().numpy(), pca, atol=1e-3)
    finally:
        dm.teardown()

