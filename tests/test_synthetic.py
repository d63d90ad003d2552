"""The synthetic town generator: layout, exact geometry, determinism and cache safety (tiny configs, fast)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from fuseloc.data.town import (
    TownConfig,
    default_scene_dir,
    generate,
    generate_town,
    layout,
    render,
    scene_hash,
    textures,
    views,
)
from fuseloc.types import qvec_to_rotmat

TINY = TownConfig(
    image_width=160,
    image_height=120,
    focal=125.0,
    n_streets=1,
    facades_per_side=3,
    texels_per_metre=16.0,
    n_repeated_textures=1,
    copies_per_repeated=2,
    min_repeat_separation=10.0,
    n_end_textures=1,
    db_spacing=8.0,
    db_yaws_deg=(45.0, -135.0),
    n_day_queries=2,
    n_night_queries=2,
)


@pytest.fixture(scope="module")
def tiny_town(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_town(tmp_path_factory.mktemp("town") / "scene", TINY)


def _read_poses(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """World-to-camera (R, t) of every image, from sparse/images.txt and gt_poses.txt."""
    poses = {}
    lines = [ln for ln in (root / "sparse" / "images.txt").read_text().splitlines() if not ln.startswith("#")]
    for header in lines[::2]:  # two lines per image, the second (2D points) is empty
        tok = header.split()
        poses[tok[9]] = ([float(v) for v in tok[1:5]], [float(v) for v in tok[5:8]])
    for line in (root / "gt_poses.txt").read_text().splitlines():
        tok = line.split()
        poses[tok[0]] = ([float(v) for v in tok[1:5]], [float(v) for v in tok[5:8]])
    return {n: (qvec_to_rotmat(q), np.array(t)) for n, (q, t) in poses.items()}


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_layout_files_exist_and_parse(tiny_town: Path):
    root = tiny_town
    record = json.loads((root / ".complete").read_text())
    assert record["config"] == TINY.to_json()
    cams = [ln for ln in (root / "sparse" / "cameras.txt").read_text().splitlines() if not ln.startswith("#")]
    assert cams == ["1 PINHOLE 160 120 125.0 125.0 80.0 60.0"]
    assert (root / "sparse" / "points3D.txt").is_file()
    db = sorted(p.relative_to(root / "images").as_posix() for p in (root / "images" / "db").glob("*.png"))
    n_db = TINY.n_streets * 3 * len(TINY.db_yaws_deg)  # 24 m street, 2 m margins, 8 m spacing: 3 positions
    assert len(db) == n_db
    poses = _read_poses(root)
    assert sorted(n for n in poses if n.startswith("db/")) == db

    queries = [ln.split() for ln in (root / "queries_with_intrinsics.txt").read_text().splitlines()]
    assert len(queries) == TINY.n_day_queries + TINY.n_night_queries
    for tok in queries:
        assert tok[1:] == ["PINHOLE", "160", "120", "125.0", "125.0", "80.0", "60.0"]
        assert (root / "images" / tok[0]).is_file()
    conditions = dict(ln.split() for ln in (root / "query_conditions.txt").read_text().splitlines())
    assert sorted(conditions.values()) == ["day", "day", "night", "night"]
    assert all(name.startswith(f"query/{c}/") for name, c in conditions.items())
    assert set(conditions) <= set(poses)
    image = cv2.imread(str(root / "images" / queries[0][0]))
    assert image.shape == (120, 160, 3)

    import pycolmap

    rec = pycolmap.Reconstruction(str(root / "sparse"))
    assert rec.num_images() == n_db and rec.num_points3D() == 0
    image = next(iter(rec.images.values()))
    R, t = poses[image.name]
    np.testing.assert_allclose(image.cam_from_world().matrix(), np.c_[R, t], atol=1e-12)


def test_poses_are_valid_rotations_above_the_ground(tiny_town: Path):
    for name, (R, t) in _read_poses(tiny_town).items():
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(R) == pytest.approx(1.0)
        center = -R.T @ t
        assert 1.0 < center[2] < 2.2, name
        assert 0 < center[0] < TINY.street_length and abs(center[1]) < TINY.street_width / 2, name
    q = [float(v) for v in (tiny_town / "gt_poses.txt").read_text().split()[1:5]]
    assert np.linalg.norm(q) == pytest.approx(1.0) and q[0] >= 0


def test_facade_points_project_onto_their_texture(tiny_town: Path):
    """Project facade points with the written pose; the pixels there must show the texture colours."""
    town = layout.build_town(TINY)
    K = render.intrinsics_matrix(TINY)
    poses = _read_poses(tiny_town)
    checked = 0
    for name in ("db/street0_000.png", "db/street0_003.png", "query/day/0000.png"):
        R, t = poses[name]
        image = cv2.imread(str(tiny_town / "images" / name))[:, :, ::-1].astype(np.float64)
        rendered = render.render_view(town, K, R, t, TINY.image_width, TINY.image_height)
        for facade in town.facades:
            s, tt = np.meshgrid(np.linspace(0.02, 0.98, 40), np.linspace(0.02, 0.98, 40))
            X = facade.point_at(s.ravel(), tt.ravel())
            x_cam = X @ R.T + t
            uv = x_cam[:, :2] / x_cam[:, 2:3] * TINY.focal + K[:2, 2]
            col, row = np.floor(uv[:, 0]).astype(int), np.floor(uv[:, 1]).astype(int)
            inside = (x_cam[:, 2] > 0.5) & (col >= 2) & (col < TINY.image_width - 2) & (row >= 2)
            inside &= row < TINY.image_height - 2
            col, row, ss, ts, z = (
                col[inside],
                row[inside],
                s.ravel()[inside],
                tt.ravel()[inside],
                x_cam[inside, 2],
            )
            # Keep the points the facade shows (not occluded): the z-buffer there is this facade at this depth.
            own = (rendered.facade[row, col] == facade.index) & (
                np.abs(rendered.depth[row, col] - z) < 0.05 * z
            )
            if own.sum() < 30:
                continue
            level = town.textures[facade.texture].levels[2]  # blurred like the rendering of a distant facade
            h, w = level.shape[:2]
            expected = level[(ts[own] * h).astype(int), (ss[own] * w).astype(int)].mean(axis=1)
            observed = image[row[own], col[own]].mean(axis=1)
            shifted = image[row[own], np.clip(col[own] + 3, 0, TINY.image_width - 1)].mean(axis=1)
            corr = np.corrcoef(expected, observed)[0, 1]
            assert corr > 0.6, (name, facade.texture, corr)
            assert corr > np.corrcoef(expected, shifted)[0, 1], (name, facade.texture)
            checked += 1
    assert checked >= 3


def test_renderer_pixel_convention_is_exact():
    """Checkerboard facade: sub-pixel corners land on the projected 3D corners (COLMAP pixel centres)."""
    tex = ((np.arange(512)[:, None] // 64 + np.arange(512)[None] // 64) % 2 * 200 + 25).astype(np.uint8)
    levels = [np.repeat(tex[:, :, None], 3, axis=2)]
    for _ in range(textures.MIP_LEVELS):
        prev = levels[-1]
        levels.append(
            cv2.resize(prev, (prev.shape[1] // 2, prev.shape[0] // 2), interpolation=cv2.INTER_AREA)
        )
    facade = layout.Facade(0, "cb", (0.0, 5.0, 8.0), (1.0, 0.0, 0.0), 8.0, 8.0, 0, "left")
    town = layout.Town([facade], {"cb": textures.Texture("cb", levels)})
    config = TownConfig(image_width=320, image_height=240, focal=250.0)
    K = render.intrinsics_matrix(config)
    R = views.rotation_from_angles(75.0, 20.0, 10.0)
    center = np.array([3.0, -1.0, 2.0])
    t = -R @ center
    gray = render.render_view(town, K, R, t, 320, 240).rgb.mean(axis=2).astype(np.float32)
    corners = np.array([facade.point_at(a / 8, b / 8) for a in range(1, 8) for b in range(1, 8)])
    x_cam = corners @ R.T + t
    uv = x_cam[:, :2] / x_cam[:, 2:3] * 250.0 + K[:2, 2]
    keep = (uv[:, 0] > 10) & (uv[:, 0] < 310) & (uv[:, 1] > 10) & (uv[:, 1] < 230)
    assert keep.sum() >= 10
    start = (np.round(uv[keep] - 0.5) + 0.3).astype(np.float32).reshape(-1, 1, 2)
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 100, 1e-4)
    refined = cv2.cornerSubPix(gray, start, (4, 4), (-1, -1), criteria).reshape(-1, 2) + 0.5
    error = np.linalg.norm(refined - uv[keep], axis=1)
    assert np.median(error) < 0.1, error


def test_facade_partly_behind_the_camera_is_clipped():
    """A wall running past the camera: only rays that hit it in front are drawn, at the analytic depth."""
    tex = np.full((64, 256, 3), 200, dtype=np.uint8)
    levels = [tex] + [
        np.full((64 >> k, 256 >> k, 3), 200, dtype=np.uint8) for k in range(1, textures.MIP_LEVELS + 1)
    ]
    facade = layout.Facade(0, "w", (-20.0, 2.0, 6.0), (1.0, 0.0, 0.0), 40.0, 6.0, 0, "left")
    town = layout.Town([facade], {"w": textures.Texture("w", levels)})
    K = np.array([[100.0, 0, 80], [0, 100.0, 60], [0, 0, 1]])
    R = views.rotation_from_angles(60.0, 0.0, 0.0)  # the wall spans from behind to in front
    center = np.array([0.0, 0.0, 1.5])
    t = -R @ center
    out = render.render_view(town, K, R, t, 160, 120)
    uu, vv = np.meshgrid(np.arange(160) + 0.5, np.arange(120) + 0.5)
    rays = np.stack([uu, vv, np.ones_like(uu)], axis=-1) @ np.linalg.inv(K).T @ R  # world directions
    lam = (2.0 - center[1]) / rays[..., 1]
    hit = center + lam[..., None] * rays
    expected = (lam > 0) & (hit[..., 0] > -20) & (hit[..., 0] < 20) & (hit[..., 2] > 0) & (hit[..., 2] < 6)
    drawn = out.facade == 0
    assert drawn.any() and (~drawn).any()
    assert (drawn != expected).sum() <= 0.002 * drawn.size  # boundary pixels only
    both = drawn & expected
    np.testing.assert_allclose(out.depth[both], lam[both], rtol=1e-4)
    assert np.all(out.rgb[drawn] > 190)


def test_generation_is_deterministic(tiny_town: Path, tmp_path: Path):
    again = generate_town(tmp_path / "again", TINY)
    assert _digest(again) == _digest(tiny_town)


def test_different_seed_gives_a_different_town_not_only_other_queries(tiny_town: Path, tmp_path: Path):
    """The seed makes the town itself (what every database image shows), unlike ``query_seed`` which re-renders
    only the queries (test_query_seed_renders_new_queries_of_the_same_database); same files, other content."""
    other = generate_town(tmp_path / "other", dataclasses.replace(TINY, seed=1))
    base, new = _digest(tiny_town), _digest(other)
    assert base.keys() == new.keys()
    db_images = [k for k in base if k.startswith("images/db/")]
    assert db_images and all(base[k] != new[k] for k in db_images)  # another town along the same camera path
    assert base["gt_poses.txt"] != new["gt_poses.txt"]


def test_complete_town_is_not_regenerated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    root = generate_town(tmp_path / "scene", TINY)
    before = _digest(root)

    def fail(*args, **kwargs):
        raise AssertionError("should not render again")

    monkeypatch.setattr(generate, "render_view", fail)
    assert generate_town(root, TINY) == root
    assert _digest(root) == before
    with pytest.raises(AssertionError, match="should not render"):
        generate_town(root, TINY, overwrite=True)
    assert _digest(root) == before  # a failed regeneration leaves the old town in place
    assert not list(tmp_path.glob("scene.tmp-*"))


def test_interrupted_generation_is_not_trusted(tmp_path: Path):
    root = tmp_path / "scene"
    # A crashed run: a temp dir of a dead process (with a marker, even) and a root without .complete.
    dead_pid = 2**22 + 12345
    while generate._pid_alive(dead_pid):
        dead_pid += 1
    stale = root.with_name(f"{root.name}.tmp-{dead_pid}")
    (stale / "images").mkdir(parents=True)
    (stale / ".complete").write_text(json.dumps(generate._completion_record(TINY)))
    (root / "images" / "db").mkdir(parents=True)
    (root / "images" / "db" / "street0_000.png").write_bytes(b"half written")
    assert not generate.is_complete(root, TINY)

    generate_town(root, TINY)
    assert generate.is_complete(root, TINY)
    assert cv2.imread(str(root / "images" / "db" / "street0_000.png")) is not None
    assert not stale.exists()

    # A complete town of another config is not trusted either.
    other = dataclasses.replace(TINY, seed=7)
    assert not generate.is_complete(root, other)
    generate_town(root, other)
    assert json.loads((root / ".complete").read_text())["config"]["seed"] == 7


def test_default_scene_dir_is_keyed_by_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FUSELOC_CACHE", str(tmp_path))
    default = default_scene_dir()
    assert default.parent == tmp_path and default.name.startswith("synthetic-town-")
    assert default_scene_dir(TownConfig()) == default
    assert default_scene_dir(TownConfig(seed=1)) != default
    monkeypatch.delenv("FUSELOC_CACHE")
    assert default_scene_dir().parent == Path(os.path.expanduser("~")) / ".cache" / "fuseloc"


def test_repeated_textures_are_far_apart_with_different_neighbours():
    town = layout.build_town(TownConfig())
    side = [f for f in town.facades if f.role in ("left", "right")]
    by_texture: dict[str, list[layout.Facade]] = {}
    for f in side:
        by_texture.setdefault(f.texture, []).append(f)
    repeated = {k: v for k, v in by_texture.items() if len(v) > 1}
    assert len(repeated) == TownConfig().n_repeated_textures
    assert sum(len(v) == 1 for v in by_texture.values()) >= 4  # some unique context remains
    position = {(f.street, f.role, round(f.center[0], 3)): f.texture for f in side}
    for copies in repeated.values():
        for i, a in enumerate(copies):
            for b in copies[i + 1 :]:
                assert np.linalg.norm(a.center - b.center) >= TownConfig().min_repeat_separation
        neighbours = [
            position.get((f.street, f.role, round(f.center[0] + dx, 3)))
            for f in copies
            for dx in (-TownConfig().facade_width, TownConfig().facade_width)
        ]
        neighbours = [n for n in neighbours if n is not None]
        assert len(neighbours) == len(set(neighbours))


def test_query_seed_renders_new_queries_of_the_same_database(tiny_town: Path, tmp_path: Path):
    # None leaves the hash (and so every town generated before the field existed) unchanged.
    assert "query_seed" not in TINY.to_json()
    assert scene_hash(dataclasses.replace(TINY, query_seed=None)) == scene_hash(TINY)
    assert scene_hash(dataclasses.replace(TINY, query_seed=5)) != scene_hash(TINY)
    other = generate_town(tmp_path / "valq", dataclasses.replace(TINY, query_seed=5))
    base, new = _digest(tiny_town), _digest(other)
    db = [k for k in base if k.startswith(("images/db/", "sparse/"))]
    assert db and all(base[k] == new[k] for k in db)
    queries = [k for k in base if k.startswith("images/query/")]
    assert queries and all(base[k] != new[k] for k in queries)
    assert (other / "gt_poses.txt").read_text() != (tiny_town / "gt_poses.txt").read_text()


def test_embedded_town_validation_queries_are_a_second_rendering(tiny_town: Path, monkeypatch: pytest.MonkeyPatch):
    from fuseloc.data.readers import town as town_reader
    from fuseloc.errors import InputError

    monkeypatch.setattr("fuseloc.data.town.TownConfig", lambda **kw: dataclasses.replace(TINY, **kw))
    reader = town_reader.TownReader(root=tiny_town, validation_query_seed=5)
    data = reader.load()
    val = data.validation
    assert val is not None and len(val) == len(data.queries) and val.has_ground_truth
    assert sorted(set(val.conditions)) == ["day", "night"]
    # Distinct names: feature caches are keyed by name and shared with the evaluation queries.
    assert not set(val.names) & set(data.queries.names)
    assert all((Path(val.image_root) / n).is_file() for n in val.names)
    assert [p.t.tolist() for p in val.gt_poses] != [p.t.tolist() for p in data.queries.gt_poses]
    assert town_reader.TownReader(root=tiny_town).load().validation is None
    with pytest.raises(InputError, match="evaluation queries"):
        town_reader.TownReader(root=tiny_town, validation_query_seed=0).load()


def test_validation_queries_under_their_own_root_get_features(tiny_town: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch):
    from fuseloc.data.extractors import Sift, Vlad
    from fuseloc.data.prepare import prepare_features
    from fuseloc.data.readers import town as town_reader
    from fuseloc.data.readers.base import LocalizationData

    monkeypatch.setattr("fuseloc.data.town.TownConfig", lambda **kw: dataclasses.replace(TINY, **kw))
    data = town_reader.TownReader(root=tiny_town, validation_query_seed=5).load()
    local, vlad = Sift(max_keypoints=256), Vlad(num_clusters=4)
    evaluation = prepare_features(data, local, vlad, tmp_path, progress=False)
    evaluation.cache.close()  # the validation pass appends to the same files
    validation = prepare_features(LocalizationData(data.scene, data.validation, data.spec, data.root), local, vlad,
                                  tmp_path, progress=False)
    # One vocabulary (keyed by the database only) and one cache for both query sets.
    assert validation.global_tag == evaluation.global_tag
    assert validation.cache.local_path == evaluation.cache.local_path
    for a, b in zip(data.queries.names, data.validation.names, strict=True):
        assert len(validation.cache.local(b).keypoints) > 0
        assert not np.array_equal(validation.cache.global_descriptor(a), validation.cache.global_descriptor(b))
    validation.cache.close()


def test_a_queries_only_town_renders_no_database_and_is_not_taken_for_a_full_one(tmp_path: Path):
    root = generate_town(tmp_path / "q", TINY, database=False)
    assert not list((root / "images" / "db").glob("*.png"))
    assert len(list((root / "images" / "query").rglob("*.png"))) == TINY.n_day_queries + TINY.n_night_queries
    assert (root / "sparse" / "images.txt").is_file()  # the database is described, only not rendered
    assert generate.is_complete(root, TINY, database=False) and not generate.is_complete(root, TINY)
    full = generate_town(root, TINY)  # asking for the full town renders it
    assert generate.is_complete(full, TINY) and list((full / "images" / "db").glob("*.png"))
