"""Tiny copies of the four benchmarks, written file by file in their release formats (DATASETS.md §4-7).

Images are rendered from known poses: a photo mosaic (scikit-image's bundled photos) on the world plane
z = 0, seen by cameras about 4 m in front of it, with each camera model's exact COLMAP projection (pycolmap
unprojects every pixel, distortion included). Map points are the plane points under SIFT keypoints of the
database images, observed where they project in every database image, so the maps agree with what the
pipeline later detects and the queries localize to their known poses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from scipy.spatial.transform import Rotation

from fuseloc.data.extractors import Sift
from fuseloc.data.writers import ImageRecord, write_model_binary, write_model_text, write_nvm
from fuseloc.types import Camera, Pose

PLANE_HALF_WIDTH = 3.2  # metres; the mosaic spans [-3.2, 3.2] x [-2.4, 2.4] on z = 0
PLANE_HALF_HEIGHT = 2.4
CMU_INTRINSICS = (
    "# Camera intrinsics: [Camera ID] [Distortion model] [width] [height] [fx] [fy] [cx] [cy] [k1] [k2] [p1] [p2]\n"
    "c0 OPENCV 1024 768 868.993378 866.063001 525.942323 420.042529 -0.399431 0.188924 0.000153 0.000571\n"
    "c1 OPENCV 1024 768 873.382641 876.489513 529.324138 397.272397 -0.397066 0.181925 0.000176 -0.000579\n"
)
_TEXTURE: np.ndarray | None = None


def texture() -> np.ndarray:
    """A 1024x768 RGB mosaic of four bundled photos (real texture for SIFT)."""
    global _TEXTURE
    if _TEXTURE is None:
        import skimage.data as data

        tiles = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
        tiles = [cv2.resize(t, (512, 384), interpolation=cv2.INTER_AREA) for t in tiles]
        _TEXTURE = np.vstack([np.hstack(tiles[:2]), np.hstack(tiles[2:])])
    return _TEXTURE


def camera_pose(center: tuple[float, float, float], yaw_deg: float = 0.0, pitch_deg: float = 0.0, roll_deg: float = 0.0) -> Pose:
    """A camera at ``center`` looking along +z (towards the plane) turned by small angles."""
    R = Rotation.from_euler("yxz", [yaw_deg, pitch_deg, roll_deg], degrees=True).as_matrix().T
    c = np.asarray(center, float)
    return Pose(R, -R @ c)


def _pycolmap_camera(camera: Camera):  # noqa: ANN202
    import pycolmap

    return pycolmap.Camera(model=camera.model, width=camera.width, height=camera.height, params=list(camera.params))


_RENDERED: dict[tuple, np.ndarray] = {}


def render(camera: Camera, pose: Pose) -> np.ndarray:
    """RGB image of the textured plane seen by ``camera`` at ``pose`` (COLMAP pixel convention)."""
    key = (camera, pose.R.round(12).tobytes(), pose.t.round(12).tobytes())
    if key not in _RENDERED:
        _RENDERED[key] = _render(camera, pose)
    return _RENDERED[key]


def _render(camera: Camera, pose: Pose) -> np.ndarray:
    u, v = np.meshgrid(np.arange(camera.width) + 0.5, np.arange(camera.height) + 0.5)
    pix = np.stack([u.ravel(), v.ravel()], 1)
    rays = np.asarray(_pycolmap_camera(camera).cam_from_img(pix))
    rays_w = np.c_[rays, np.ones(len(rays))] @ pose.R  # R^T d for each row
    c = pose.center
    lam = -c[2] / rays_w[:, 2]
    xy = c[None, :2] + lam[:, None] * rays_w[:, :2]
    tex = texture()
    s = (xy[:, 0] / (2 * PLANE_HALF_WIDTH) + 0.5) * tex.shape[1] - 0.5
    t = (xy[:, 1] / (2 * PLANE_HALF_HEIGHT) + 0.5) * tex.shape[0] - 0.5
    map_x = s.reshape(camera.height, camera.width).astype(np.float32)
    map_y = t.reshape(camera.height, camera.width).astype(np.float32)
    return cv2.remap(tex, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


def project(camera: Camera, pose: Pose, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 2) COLMAP pixels of world points and a mask of those in front and inside the image."""
    pc = pose.transform(points)
    front = pc[:, 2] > 1e-6
    uv = np.full((len(points), 2), -1.0)
    if front.any():
        uv[front] = np.asarray(_pycolmap_camera(camera).img_from_cam(pc[front] / pc[front, 2:3]))
    inside = front & (uv[:, 0] > 1) & (uv[:, 1] > 1) & (uv[:, 0] < camera.width - 1) & (uv[:, 1] < camera.height - 1)
    return uv, inside


def backproject(camera: Camera, pose: Pose, uv: np.ndarray) -> np.ndarray:
    rays = np.asarray(_pycolmap_camera(camera).cam_from_img(np.asarray(uv, np.float64)))
    rays_w = np.c_[rays, np.ones(len(rays))] @ pose.R
    c = pose.center
    lam = -c[2] / rays_w[:, 2]
    return c[None] + lam[:, None] * rays_w


def save_image(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if path.suffix == ".jpg" else []
    ok = cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise RuntimeError(f"cannot write {path}")


@dataclass
class View:
    name: str
    camera: Camera
    pose: Pose


@dataclass
class MapData:
    """Points seen by database views: xyz and, per view, (point index, pixel) observations."""

    xyz: np.ndarray
    observations: list[list[tuple[int, np.ndarray]]] = field(default_factory=list)


def build_map(views: list[View], images: list[np.ndarray], max_points_per_image: int = 400,
              extractor: Sift | None = None) -> MapData:
    """Plane points under SIFT keypoints of each database view, observed in every view that sees them."""
    extractor = extractor or Sift(max_keypoints=max_points_per_image)
    xyz = []
    for view, image in zip(views, images):
        kp = extractor(image).keypoints[:max_points_per_image]
        # SIFT repeats a location for each dominant orientation; one map point per location.
        kp = kp[np.sort(np.unique(np.round(kp, 2), axis=0, return_index=True)[1])]
        pts = backproject(view.camera, view.pose, kp)
        inside = (np.abs(pts[:, 0]) < PLANE_HALF_WIDTH - 0.05) & (np.abs(pts[:, 1]) < PLANE_HALF_HEIGHT - 0.05)
        xyz.append(pts[inside])
    points = np.concatenate(xyz)
    points[:, 2] = 0.0
    data = MapData(points)
    for view in views:
        uv, visible = project(view.camera, view.pose, points)
        data.observations.append([(int(i), uv[i]) for i in np.flatnonzero(visible)])
    return data


def colmap_records(views: list[View], data: MapData, camera_ids: list[int], scale: float = 1.0) -> list[ImageRecord]:
    """Image records with one 2D point per observation (ids 1-based), plus an unobserved point each."""
    records = []
    for k, (view, obs) in enumerate(zip(views, data.observations)):
        xys = np.array([uv for _, uv in obs] + [[1.0, 1.0]]) / scale
        ids = np.array([i + 1 for i, _ in obs] + [-1])
        records.append(ImageRecord(k + 1, view.name, camera_ids[k], view.pose.qvec, view.pose.t, xys, ids))
    return records


def write_colmap(model_dir: Path, cameras: dict[int, Camera], views: list[View], data: MapData, camera_ids: list[int],
                 binary: bool = True, scale: float = 1.0) -> Path:
    records = colmap_records(views, data, camera_ids, scale)
    writer = write_model_binary if binary else write_model_text
    return writer(model_dir, cameras, records, np.arange(1, len(data.xyz) + 1), data.xyz)


def _render_all(root: Path, views: list[View], image_root: Path) -> list[np.ndarray]:
    images = []
    for view in views:
        image = render(view.camera, view.pose)
        save_image(image_root / view.name, image)
        images.append(image)
    return images


# ------------------------------------------------------------------------------------------------- Aachen


@dataclass
class Fixture:
    root: Path
    query_poses: dict[str, Pose]  # internal query name -> known world-to-camera pose
    submission_names: dict[str, str]  # internal query name -> expected submission name
    db_views: list[View] = field(default_factory=list)
    extra: dict = field(default_factory=dict)


DB_CENTERS = [(-0.5, -0.2, -4.0), (0.5, -0.2, -4.0), (0.0, 0.35, -4.2)]
DB_ANGLES = [(4.0, -2.0, 0.0), (-4.0, -2.0, 1.0), (0.0, 3.0, -1.0)]
QUERY_CENTERS = [(-0.2, 0.05, -3.8), (0.25, -0.1, -4.1)]
QUERY_ANGLES = [(2.0, 1.0, 2.0), (-3.0, -1.0, -1.0)]


def make_aachen(root: Path) -> Fixture:
    image_root = root / "images_upright"
    cam_db = Camera("SIMPLE_RADIAL", 400, 300, (330.0, 200.0, 150.0, 0.01))
    cam_seq = Camera("SIMPLE_RADIAL", 400, 300, (300.0, 201.0, 149.0, 0.0))
    db_names = ["db/1.jpg", "db/2.jpg", "sequences/gopro3_undistorted/gopro3_00001.png"]
    db = [View(n, cam_db if i < 2 else cam_seq, camera_pose(c, *a))
          for i, (n, c, a) in enumerate(zip(db_names, DB_CENTERS, DB_ANGLES))]
    images = _render_all(root, db, image_root)
    data = build_map(db, images)
    write_colmap(root / "3D-models" / "aachen_v_1_1", {1: cam_db, 2: cam_seq}, db, data, [1, 1, 2])
    cam_q = Camera("SIMPLE_RADIAL", 400, 300, (310.0, 200.0, 150.0, -0.005))
    q_names = ["query/day/nexus4/IMG_20130101_120000.jpg", "query/night/nexus5x_additional_night/IMG_20161227_172439.jpg"]
    queries = [View(n, cam_q, camera_pose(c, *a)) for n, c, a in zip(q_names, QUERY_CENTERS, QUERY_ANGLES)]
    _render_all(root, queries, image_root)
    # An image in a query folder that no list names: it must not be localized.
    save_image(image_root / "query/day/nexus4/IMG_20130101_999999.jpg", images[0])
    (root / "queries").mkdir(parents=True, exist_ok=True)
    for view, list_name in zip(queries, ["day_time_queries_with_intrinsics.txt", "night_time_queries_with_intrinsics.txt"]):
        (root / "queries" / list_name).write_text(" ".join([view.name, *view.camera.to_tokens()]) + "\n")
    return Fixture(root, {v.name: v.pose for v in queries}, {v.name: Path(v.name).name for v in queries}, db)


# ----------------------------------------------------------------------------------------------- RobotCar

ROBOTCAR_INTRINSICS = {"left": (100.0, 100.0, 125.027, 127.865), "rear": (100.0, 100.0, 127.056, 124.547),
                       "right": (100.0, 100.0, 125.626, 122.565)}


def robotcar_camera(name: str) -> Camera:
    return Camera("PINHOLE", 256, 256, ROBOTCAR_INTRINSICS[name])


def make_robotcar(root: Path) -> Fixture:
    """256x256 images (the release's 1024x1024 scaled by 1/4, intrinsics scaled to match)."""
    image_root = root / "images"
    for cam, (fx, fy, cx, cy) in ROBOTCAR_INTRINSICS.items():
        path = root / "intrinsics" / f"{cam}_intrinsics.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"fx {fx:.6f}\nfy {fy:.6f}\ncx {cx:.6f}\ncy {cy:.6f}\n")
    db_cams = ["rear", "rear", "left"]
    db_ts = ["1417176458999821", "1417176459999784", "1417176458999821"]
    db = [View(f"overcast-reference/{c}/{t}.jpg", robotcar_camera(c), camera_pose(center, *a))
          for c, t, center, a in zip(db_cams, db_ts, DB_CENTERS, DB_ANGLES)]
    images = _render_all(root, db, image_root)
    data = build_map(db, images, max_points_per_image=300)
    measurements: list[list[tuple[int, int, float, float]]] = [[] for _ in data.xyz]
    for k, obs in enumerate(data.observations):
        for feat, (i, uv) in enumerate(obs):
            # RobotCar's all.nvm comes from COLMAP's NVM exporter: ABSOLUTE pixels (DATASETS.md §2.1).
            measurements[i].append((k, feat, uv[0], uv[1]))
    nvm_names = [f"./{Path(v.name).with_suffix('.png')}" for v in db]
    write_nvm(root / "3D-models/all-merged/all.nvm", nvm_names, [100.0] * len(db), [v.pose.qvec for v in db],
              [v.pose.center for v in db], data.xyz, measurements)
    test_view = View("night/rear/1418235223450115.jpg", robotcar_camera("rear"), camera_pose(QUERY_CENTERS[0], *QUERY_ANGLES[0]))
    train_view = View("dusk/rear/1416907240474370.jpg", robotcar_camera("rear"), camera_pose(QUERY_CENTERS[1], *QUERY_ANGLES[1]))
    _render_all(root, [test_view, train_view], image_root)
    (root / "robotcar_v2_test.txt").write_text("rear/1418235223450115.png\n")
    c2w = train_view.pose.inverse().matrix()
    (root / "robotcar_v2_train.txt").write_text(
        "dusk/rear/1416907240474370.png " + " ".join(f"{v:.12f}" for v in c2w.ravel()) + "\n")
    return Fixture(root, {test_view.name: test_view.pose}, {test_view.name: "rear/1418235223450115.jpg"}, db,
                   {"train": {train_view.name: train_view.pose}})


# ---------------------------------------------------------------------------------------------------- CMU


def cmu_cameras() -> dict[str, Camera]:
    cams = {}
    for line in CMU_INTRINSICS.splitlines()[1:]:
        tokens = line.split()
        cams[tokens[0]] = Camera.from_tokens(tokens[1:])
    return cams


def make_cmu(root: Path, slices: tuple[int, ...] = (2, 3)) -> Fixture:
    """Test slices with real OPENCV intrinsics (1024x768, distorted images), and training slice 7."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "intrinsics.txt").write_text(CMU_INTRINSICS)
    cams = cmu_cameras()
    fixture = Fixture(root, {}, {})
    for number in slices:
        slice_dir = root / f"slice{number}"
        base = 100 * number
        db = [View(f"img_{base + k:05d}_c{k % 2}_13033984750{k:05d}us.jpg", cams[f"c{k % 2}"], camera_pose(c, *a))
              for k, (c, a) in enumerate(zip(DB_CENTERS[:2], DB_ANGLES[:2]))]
        images = _render_all(root, db, slice_dir / "database")
        data = build_map(db, images, max_points_per_image=300)
        write_colmap(slice_dir / "sparse", {1: cams["c0"], 2: cams["c1"]}, db, data, [1, 2])
        (slice_dir / f"ground-truth-database-images-slice{number}.txt").write_text(
            "".join(v.name + " " + " ".join(f"{x:.12f}" for x in [*v.pose.qvec, *v.pose.center]) + "\n" for v in db))
        queries = [View(f"img_{base + 50 + k:05d}_c{k % 2}_13033985000{k:05d}us.jpg", cams[f"c{k % 2}"], camera_pose(c, *a))
                   for k, (c, a) in enumerate(zip(QUERY_CENTERS, QUERY_ANGLES))]
        _render_all(root, queries, slice_dir / "query")
        (slice_dir / f"test-images-slice{number}.txt").write_text("".join(v.name + "\n" for v in queries))
        (slice_dir / "camera-poses").mkdir()
        for v in queries:
            fixture.query_poses[f"query/{v.name}"] = v.pose
            fixture.submission_names[f"query/{v.name}"] = v.name
        fixture.extra.setdefault("db", {})[number] = db
    slice7 = root / "slice7"
    (slice7 / "camera-poses").mkdir(parents=True)
    train_view = View("img_07001_c1_1311874770123456us.jpg", cams["c1"], camera_pose(QUERY_CENTERS[0], *QUERY_ANGLES[0]))
    (slice7 / "camera-poses" / "empty.txt").write_text("")
    (slice7 / "camera-poses" / "x.txt").write_text(
        train_view.name + " " + " ".join(f"{x:.12f}" for x in [*train_view.pose.qvec, *train_view.pose.center]) + "\n")
    fixture.extra["train"] = {f"query/{train_view.name}": train_view.pose}
    return fixture


# ---------------------------------------------------------------------------------------------- Cambridge

CAMBRIDGE_HEADER = "Visual Landmark Dataset V1\nImageFile, Camera Position [X Y Z W P Q R]\n\n"


def make_cambridge(root: Path, scene: str = "ShopFacade") -> Fixture:
    """960x540 frames with hloc-style models at 512x288 (the real 1920/1024 = 1.875 scale)."""
    scale = 1.875
    model_cam = Camera("SIMPLE_RADIAL", 512, 288, (300.0, 256.0, 144.0, 0.0))
    full_cam = model_cam.scaled(scale)
    db = [View(n, full_cam, camera_pose(c, *a)) for n, c, a in
          zip(["seq1/frame00001.png", "seq1/frame00002.png", "seq3/frame00007.png"], DB_CENTERS, DB_ANGLES)]
    queries = [View(n, full_cam, camera_pose(c, *a)) for n, c, a in
               zip(["seq2/frame00001.png", "seq2/frame00002.png"], QUERY_CENTERS, QUERY_ANGLES)]
    scene_dir = root / scene
    images = _render_all(root, db, scene_dir)
    _render_all(root, queries, scene_dir)
    data = build_map(db, images, max_points_per_image=300)
    hloc_dir = root / "CambridgeLandmarks_Colmap_Retriangulated_1024px" / scene
    write_colmap(hloc_dir / "model_train", {1: model_cam}, db, data, [1] * len(db), scale=scale)
    everything = [ImageRecord(k + 1, v.name, 1, v.pose.qvec, v.pose.t, np.zeros((0, 2)), np.zeros(0, np.int64))
                  for k, v in enumerate(db + queries)]
    write_model_text(hloc_dir / "empty_all", {1: model_cam}, everything, np.zeros(0, np.int64), np.zeros((0, 3)))
    (hloc_dir / "list_query.txt").write_text("".join(v.name + "\n" for v in queries))

    def dataset_lines(views: list[View]) -> str:
        return CAMBRIDGE_HEADER + "".join(
            v.name + " " + " ".join(f"{x:.12f}" for x in [*v.pose.center, *v.pose.qvec]) + "\n" for v in views)

    (scene_dir / "dataset_train.txt").write_text(dataset_lines(db))
    (scene_dir / "dataset_test.txt").write_text(dataset_lines(queries))
    measurements: list[list[tuple[int, int, float, float]]] = [[] for _ in data.xyz]
    for k, obs in enumerate(data.observations):
        for feat, (i, uv) in enumerate(obs):
            # Cambridge's reconstruction.nvm comes from VisualSFM: pixels relative to the image centre.
            measurements[i].append((k, feat, uv[0] - full_cam.width / 2, uv[1] - full_cam.height / 2))
    all_views = db + queries
    write_nvm(scene_dir / "reconstruction.nvm", [str(Path(v.name).with_suffix(".jpg")) for v in all_views],
              [full_cam.params[0]] * len(all_views), [v.pose.qvec for v in all_views], [v.pose.center for v in all_views],
              data.xyz, measurements)
    return Fixture(root, {f"{scene}/{v.name}": v.pose for v in queries},
                   {f"{scene}/{v.name}": f"{scene}/{v.name}" for v in queries}, db)
