"""COLMAP (binary/text, legacy and pycolmap-4) and NVM readers: agreement with pycolmap, pose conventions,
malformed input reported with file and line."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from fuseloc.data.readers.colmap_model import ImageRecord, read_model, write_model_binary, write_model_text
from fuseloc.data.readers.generic import read_pose_list
from fuseloc.data.readers.nvm import read_nvm, write_nvm
from fuseloc.data.scene import Scene
from fuseloc.errors import InputError
from fuseloc.types import Camera, Pose


def random_pose(rng: np.random.Generator) -> Pose:
    from scipy.spatial.transform import Rotation

    return Pose(Rotation.random(random_state=int(rng.integers(1 << 31))).as_matrix(), rng.normal(size=3))


def tiny_model(rng: np.random.Generator):  # noqa: ANN201
    cameras = {1: Camera("SIMPLE_RADIAL", 64, 48, (50.0, 32.0, 24.0, 0.01)), 3: Camera("OPENCV", 80, 60, (60, 61, 40, 30, 0.1, -0.01, 0.001, 0.002))}
    xyz = rng.normal(size=(6, 3))
    point_ids = np.array([10, 11, 12, 13, 14, 15])
    images = []
    for image_id, name, cam in [(5, "db/1.jpg", 1), (2, "db/2.jpg", 3), (9, "sequences/gopro3_undistorted/gopro3_00001.png", 1)]:
        pose = random_pose(rng)
        ids = np.array([10, -1, 12, 13, 14, 15] if image_id != 2 else [11, 12, -1])
        images.append(ImageRecord(image_id, name, cam, pose.qvec, pose.t, rng.uniform(0, 48, size=(len(ids), 2)), ids))
    return cameras, images, point_ids, xyz


@pytest.mark.parametrize("fmt", ["binary", "text", "pycolmap_binary", "pycolmap_text"])
def test_colmap_reader_matches_pycolmap(tmp_path, fmt):
    import pycolmap

    cameras, images, point_ids, xyz = tiny_model(np.random.default_rng(0))
    legacy = tmp_path / "legacy"
    (write_model_binary if fmt.endswith("binary") else write_model_text)(legacy, cameras, images, point_ids, xyz)
    model_dir = legacy
    if fmt.startswith("pycolmap"):
        # pycolmap >= 3.12 writes the rigs/frames files too: the five-file layout.
        model_dir = tmp_path / "five"
        model_dir.mkdir()
        rec = pycolmap.Reconstruction(str(legacy))
        rec.write_binary(str(model_dir)) if fmt.endswith("binary") else rec.write_text(str(model_dir))
        assert (model_dir / ("frames.bin" if fmt.endswith("binary") else "frames.txt")).is_file()
    ours = Scene.from_colmap(model_dir)
    theirs = Scene.from_reconstruction(pycolmap.Reconstruction(str(model_dir)))
    assert ours.image_names == theirs.image_names == ["db/2.jpg", "db/1.jpg", "sequences/gopro3_undistorted/gopro3_00001.png"]
    assert ours.image_cameras == theirs.image_cameras
    np.testing.assert_allclose(ours.R_cam_from_world, theirs.R_cam_from_world, atol=1e-12)
    np.testing.assert_allclose(ours.t_cam_from_world, theirs.t_cam_from_world, atol=1e-12)
    np.testing.assert_allclose(ours.points_xyz, theirs.points_xyz)
    np.testing.assert_array_equal(ours.point_ids, theirs.point_ids)
    key = lambda s: sorted(zip(s.obs_image.tolist(), s.obs_point.tolist(), s.obs_keypoint.tolist(), s.obs_xy.round(4).tolist()))  # noqa: E731
    assert key(ours) == key(theirs)
    assert len(ours.obs_point) == 12


def test_colmap_text_accepts_empty_points_line_and_missing_last_line(tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    (model / "cameras.txt").write_text("# c\n1 PINHOLE 10 10 5 5 5 5\n")
    (model / "images.txt").write_text("# i\n1 1 0 0 0 0 0 0 1 a.jpg\n\n2 1 0 0 0 1 0 0 1 b.jpg\n1 2 7\n3 1 0 0 0 2 0 0 1 c d.jpg")
    (model / "points3D.txt").write_text("7 1 2 3 0 0 0 -1 2 0\n")
    m = read_model(model)
    assert m.image_names == ["a.jpg", "b.jpg", "c d.jpg"]
    assert m.obs_image.tolist() == [1] and m.obs_xy.tolist() == [[1.0, 2.0]]


@pytest.mark.parametrize("file,content,line", [
    ("cameras.txt", "# c\n1 PINHOLE 10 10 5 5 5\n", 2),
    ("cameras.txt", "1 NOPE 10 10 5 5 5 5\n", 1),
    ("images.txt", "# i\n\n1 1 0 0 0 0 0 x 1 a.jpg\n\n", 3),
    ("points3D.txt", "7 1 2 3 0 0 0 -1 2\n", 1),
    ("points3D.txt", "\n\n7 1 zz 3 0 0 0 -1 2 0\n", 3),
])
def test_malformed_colmap_text_names_file_and_line(tmp_path, file, content, line):
    model = tmp_path / "m"
    model.mkdir()
    (model / "cameras.txt").write_text("1 PINHOLE 10 10 5 5 5 5\n")
    (model / "images.txt").write_text("1 1 0 0 0 0 0 0 1 a.jpg\n2 0 7\n")
    (model / "points3D.txt").write_text("7 1 2 3 0 0 0 -1 1 0\n")
    (model / file).write_text(content)
    with pytest.raises(InputError) as info:
        read_model(model)
    assert f"{file}:{line}:" in str(info.value) and "\n" not in str(info.value)


def test_truncated_binary_model_is_a_clear_error(tmp_path):
    cameras, images, point_ids, xyz = tiny_model(np.random.default_rng(1))
    write_model_binary(tmp_path, cameras, images, point_ids, xyz)
    for file in ("images.bin", "points3D.bin", "cameras.bin"):
        data = (tmp_path / file).read_bytes()
        (tmp_path / file).write_bytes(data[: len(data) - 5])
        with pytest.raises(InputError, match=f"{file}.*(truncated|corrupt)"):
            read_model(tmp_path)
        (tmp_path / file).write_bytes(data)
    header = struct.pack("<Q", 1) + struct.pack("<iiQQ", 1, 99, 10, 10)
    (tmp_path / "cameras.bin").write_bytes(header)
    with pytest.raises(InputError, match="unsupported model id 99"):
        read_model(tmp_path)


# ---------------------------------------------------------------------------------------------------- NVM


def test_nvm_pose_round_trip_and_submission_line(tmp_path):
    rng = np.random.default_rng(2)
    poses = [random_pose(rng) for _ in range(3)]
    xyz = rng.normal(size=(2, 3))
    path = write_nvm(tmp_path / "m.nvm", ["./a/rear/1.png", "b.jpg", "c.jpg"], [400.0, 500.0, 600.0],
                     [p.qvec for p in poses], [p.center for p in poses], xyz,
                     [[(0, 3, -1.5, 2.0), (2, 0, 10.0, -20.0)], [(1, 1, 0.0, 0.0)]])
    model = read_nvm(path)
    assert model.names[0] == "./a/rear/1.png"
    R, t = model.rotations(), model.translations()
    for k, pose in enumerate(poses):
        np.testing.assert_allclose(R[k], pose.R, atol=1e-12)
        np.testing.assert_allclose(t[k], pose.t, atol=1e-12)
        # Pose -> submission line -> parse -> the same world-to-camera pose.
        (tmp_path / "sub.txt").write_text(Pose(R[k], t[k]).to_line("q.jpg") + "\n")
        back = read_pose_list(tmp_path / "sub.txt")["q.jpg"]
        np.testing.assert_allclose(back.R, pose.R, atol=1e-8)
        np.testing.assert_allclose(back.t, pose.t, atol=1e-8)
    assert model.obs_point.tolist() == [0, 0, 1] and model.obs_image.tolist() == [0, 2, 1]
    assert model.obs_feature.tolist() == [3, 0, 1]
    cams = [Camera("PINHOLE", 100, 80, (1, 1, 50, 40))] * 3
    scene = model.to_scene(["a", "b", "c"], cams)
    # Centre-relative measurements land at (x + W/2, y + H/2).
    np.testing.assert_allclose(scene.obs_xy, [[48.5, 42.0], [60.0, 20.0], [50.0, 40.0]])


def test_nvm_projection_of_points_matches_measurements(tmp_path):
    """A camera at its NVM centre with focal f projects points to f*X/Z relative to the centre (the convention)."""
    rng = np.random.default_rng(3)
    pose = random_pose(rng)
    xyz = pose.inverse().transform(np.array([[0.3, -0.2, 4.0], [-0.5, 0.1, 6.0]]))
    f = 500.0
    cam_pts = pose.transform(xyz)
    meas = [[(0, i, *(f * cam_pts[i, :2] / cam_pts[i, 2]))] for i in range(2)]
    model = read_nvm(write_nvm(tmp_path / "m.nvm", ["x.jpg"], [f], [pose.qvec], [pose.center], xyz, meas))
    proj = model.translations()[0] + xyz @ model.rotations()[0].T
    np.testing.assert_allclose(f * proj[:, :2] / proj[:, 2:], model.obs_xy_centered, atol=1e-3)


@pytest.mark.parametrize("content,line", [
    ("NVM_V3\n\n2\na.jpg 1 1 0 0 0 0 0 0 0 0\nb.jpg 1 1 0 0 0 0 0\n", 5),
    ("NVM_V3\n\n1\na.jpg 1 1 0 0 0 0 0 0 0 0\n\n1\n0 0 0 1 1 1 2 0 0 1 1\n", 7),
    ("NVM_V3\n\n1\na.jpg 1 1 0 0 0 0 0 0 0 0\n\n1\n0 0 0 1 1 1 1 3 0 1 1\n", 7),
    ("NVM_V3\n\nx\n", 3),
    ("VSFM\n", 1),
    ("NVM_V3\n\n1\na.jpg\t1 1 0 0 0 zz 0 0 0 0\n", 4),
])
def test_malformed_nvm_names_file_and_line(tmp_path, content, line):
    path = tmp_path / "bad.nvm"
    path.write_text(content)
    with pytest.raises(InputError) as info:
        read_nvm(path)
    assert f"bad.nvm:{line}:" in str(info.value)


def test_nvm_crlf_and_tab_and_fixedk_header(tmp_path):
    path = tmp_path / "m.nvm"
    path.write_bytes(b"NVM_V3 FixedK 500 320 500 240 0\r\n\r\n1\r\n./x/rear/1.png\t500 1 0 0 0 1 2 3 0 0\r\n\r\n0\r\n\r\n0\r\n")
    model = read_nvm(path)
    assert model.names == ["./x/rear/1.png"] and len(model.points_xyz) == 0
    np.testing.assert_allclose(model.translations()[0], [-1, -2, -3])
