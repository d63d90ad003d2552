"""COLMAP (binary/text, legacy and pycolmap-4) and NVM readers: agreement with pycolmap, pose conventions,
NVM measurement conventions decided by reprojection, the vectorised NVM parse against the line-by-line one,
malformed input reported with file and line; no reader validates on its evaluation queries."""

from __future__ import annotations

import logging
import struct
from pathlib import Path

import numpy as np
import pytest

from fuseloc.data.readers import nvm
from fuseloc.data.readers.colmap_model import read_model
from fuseloc.data.readers.generic import read_pose_list
from fuseloc.data.readers.nvm import read_nvm
from fuseloc.data.readers.nvm_measurements import fit_measurements
from fuseloc.data.scene import QuerySet, Scene
from fuseloc.data.writers import ImageRecord, write_model_binary, write_model_text, write_nvm
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
    R, t = model.R_cam_from_world(), model.t_cam_from_world()
    for k, pose in enumerate(poses):
        np.testing.assert_allclose(R[k], pose.R, atol=1e-12)
        np.testing.assert_allclose(t[k], pose.t, atol=1e-12)
        # Pose -> submission line -> parse -> the same world-to-camera pose.
        (tmp_path / "sub.txt").write_text(Pose(R[k], t[k]).to_line("q.jpg") + "\n")
        back = read_pose_list(tmp_path / "sub.txt")["q.jpg"]
        np.testing.assert_allclose(back.R, pose.R, atol=1e-8)
        np.testing.assert_allclose(back.t, pose.t, atol=1e-8)
    assert model.obs_point.tolist() == [0, 0, 1] and model.obs_image.tolist() == [0, 2, 1]
    assert model.obs_keypoint.tolist() == [3, 0, 1]
    cams = [Camera("PINHOLE", 100, 80, (1, 1, 50, 40))] * 3
    # Three arbitrary measurements cannot tell the conventions apart: the override decides.
    with pytest.raises(InputError, match=r"m.nvm: cannot tell .*only \d of 3 sampled measurements"):
        model.to_scene(["a", "b", "c"], cams)
    # Centre-relative measurements land at (x + W/2, y + H/2); absolute ones stay as they are.
    centered = model.to_scene(["a", "b", "c"], cams, measurements="centered")
    np.testing.assert_allclose(centered.obs_xy, [[48.5, 42.0], [60.0, 20.0], [50.0, 40.0]])
    absolute = model.to_scene(["a", "b", "c"], cams, measurements="absolute")
    np.testing.assert_allclose(absolute.obs_xy, [[-1.5, 2.0], [10.0, -20.0], [0.0, 0.0]])
    with pytest.raises(InputError, match="measurements must be one of"):
        model.to_scene(["a", "b", "c"], cams, measurements="middle")


def test_nvm_projection_of_points_matches_measurements(tmp_path):
    """A camera at its NVM centre with focal f projects points to f*X/Z relative to the centre (the convention)."""
    rng = np.random.default_rng(3)
    pose = random_pose(rng)
    xyz = pose.inverse().transform(np.array([[0.3, -0.2, 4.0], [-0.5, 0.1, 6.0]]))
    f = 500.0
    cam_pts = pose.transform(xyz)
    meas = [[(0, i, *(f * cam_pts[i, :2] / cam_pts[i, 2]))] for i in range(2)]
    model = read_nvm(write_nvm(tmp_path / "m.nvm", ["x.jpg"], [f], [pose.qvec], [pose.center], xyz, meas))
    proj = model.t_cam_from_world()[0] + xyz @ model.R_cam_from_world()[0].T
    np.testing.assert_allclose(f * proj[:, :2] / proj[:, 2:], model.obs_xy, atol=1e-3)


def synthetic_nvm(path, convention: str, width: int, height: int, radial: float = 0.0, pp_offset=(0.0, 0.0),
                  num_points: int = 80, noise: float = 0.2, seed: int = 0):  # noqa: ANN001, ANN201
    """An NVM file of known cameras and points whose measurements follow ``convention``.

    Returns (path, expected COLMAP pixels of every measurement in file order). Absolute files imitate COLMAP's
    exporter (true principal point ``centre + pp_offset``, which NVM cannot express); centre-relative files
    imitate VisualSFM, including its radial model: the measurement m satisfies m (1 + k |m|²) = f X / Z.
    """
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(seed)
    f = 0.8 * max(width, height)
    poses = []
    for k in range(3):
        R = Rotation.from_euler("yxz", rng.uniform(-6, 6, 3), degrees=True).as_matrix()
        poses.append(Pose(R, -R @ np.array([k - 1.0, 0.3 * k, -8.0])))
    xyz = rng.uniform([-2.5, -2.0, -1.0], [2.5, 2.0, 1.0], size=(num_points, 3))
    half = np.array([width / 2.0, height / 2.0])
    measurements: list[list[tuple[int, int, float, float]]] = [[] for _ in xyz]
    expected = []
    for i, point in enumerate(xyz):
        for k, pose in enumerate(poses):
            pc = pose.transform(point[None])[0]
            ideal = f * pc[:2] / pc[2]
            m = ideal.copy()
            for _ in range(50):  # VisualSFM's measured (distorted) point: m (1 + k r_m²) = ideal
                m = ideal / (1 + radial * (m @ m))
            m = m + rng.normal(scale=noise, size=2)
            pixel = m + half + (pp_offset if convention == "absolute" else 0.0)
            if not (0 < pixel[0] < width and 0 < pixel[1] < height):
                continue
            raw = pixel if convention == "absolute" else m
            measurements[i].append((k, len(expected), float(raw[0]), float(raw[1])))
            expected.append(pixel)
    write_nvm(path, [f"{k}.jpg" for k in range(3)], [f] * 3, [p.qvec for p in poses], [p.center for p in poses], xyz,
              measurements, radial=[radial] * 3)
    return path, np.array(expected)


def size_cameras(width: int, height: int, n: int = 3) -> list[Camera]:
    return [Camera("SIMPLE_PINHOLE", width, height, (1.0, width / 2, height / 2))] * n


@pytest.mark.parametrize("convention,width,height,radial,pp_offset", [
    ("absolute", 1024, 1024, 0.0, (-3.8, -13.8)),  # RobotCar: COLMAP export, rectified, principal point off-centre
    ("centered", 1920, 1080, -4e-8, (0, 0)),  # Cambridge: VisualSFM with radial distortion (k r² about -4 %)
    ("centered", 1920, 1080, 4e-8, (0, 0)),
    ("absolute", 64, 48, 0.0, (0.4, -0.3)),  # thresholds scale with the image, not tuned to one size
    ("centered", 64, 48, 0.0, (0, 0)),
    ("centered", 1080, 1920, 0.0, (0, 0)),  # portrait
])
def test_nvm_measurement_convention_decided_by_reprojection(tmp_path, caplog, convention, width, height, radial, pp_offset):
    path, expected = synthetic_nvm(tmp_path / "model.nvm", convention, width, height, radial, pp_offset,
                                   noise=0.2 * width / 1024)
    model = read_nvm(path)
    fit = fit_measurements(model, np.array([[width, height]] * 3, float))
    assert fit.convention == convention
    right, wrong = (fit.residual_absolute, fit.residual_centered)[:: 1 if convention == "absolute" else -1]
    assert right < 0.02 and 0.3 < wrong < 0.7  # the wrong reading is off by half the diagonal
    assert fit.distortion == ("undistort" if radial else "none")  # VisualSFM's model: x (1 + k r²) = f X / Z
    with caplog.at_level(logging.INFO, logger="fuseloc.data.readers.nvm"):
        scene = model.to_scene(["0.jpg", "1.jpg", "2.jpg"], size_cameras(width, height))
    word = "absolute" if convention == "absolute" else "centre-relative"
    assert any(f"model.nvm: measurements are {word} pixels" in r.getMessage() for r in caplog.records)
    # Every measurement becomes the COLMAP pixel where its known pose projects its point.
    np.testing.assert_allclose(scene.obs_xy, expected, atol=1e-3)


def test_nvm_measurements_fitting_neither_convention_are_rejected(tmp_path):
    path, _ = synthetic_nvm(tmp_path / "odd.nvm", "centered", 640, 480)
    text = path.read_text().splitlines()
    # Shift every measurement by a quarter of the image: a quarter-diagonal off under either reading.
    model = read_nvm(path)
    shifted = [[(int(i), int(j), float(x) + 160.0, float(y) + 120.0)] for i, j, (x, y) in
               zip(model.obs_image, model.obs_keypoint, model.obs_xy)]
    write_nvm(path, model.names, model.focals, model.qvecs, model.centers, model.points_xyz[model.obs_point], shifted)
    with pytest.raises(InputError) as info:
        read_nvm(path).to_scene(model.names, size_cameras(640, 480))
    message = str(info.value)
    assert message.startswith(f"{path}: cannot tell whether NVM measurements are absolute or centre-relative")
    assert "measurements='absolute' or 'centered'" in message and "\n" not in message
    # Poses that do not belong to the points (camera-to-world quaternions written by mistake): rejected too.
    path.write_text("\n".join(text))
    model = read_nvm(path)
    model.qvecs[:, 1:] *= -1
    with pytest.raises(InputError, match="odd.nvm: cannot tell"):
        model.to_scene(model.names, size_cameras(640, 480))


def test_nvm_measurement_override_wins_and_warns_when_the_data_disagree(tmp_path, caplog):
    path, expected = synthetic_nvm(tmp_path / "m.nvm", "centered", 640, 480)
    model = read_nvm(path)
    with caplog.at_level(logging.WARNING, logger="fuseloc.data.readers.nvm"):
        scene = model.to_scene(model.names, size_cameras(640, 480), measurements="absolute")
    np.testing.assert_allclose(scene.obs_xy, expected - [320.0, 240.0], atol=1e-3)  # as written, no offset
    assert any("read as absolute as configured, but they look centered" in r.getMessage() for r in caplog.records)
    # Too few measurements to decide: auto refuses, an explicit convention reads them.
    few, few_expected = synthetic_nvm(tmp_path / "few.nvm", "absolute", 640, 480, num_points=1)
    model = read_nvm(few)
    assert 0 < len(model.obs_image) < 5
    with pytest.raises(InputError, match=rf"few.nvm: cannot tell .*only {len(model.obs_image)} of {len(model.obs_image)} sampled"):
        model.to_scene(model.names, size_cameras(640, 480))
    np.testing.assert_allclose(model.to_scene(model.names, size_cameras(640, 480), measurements="absolute").obs_xy,
                               few_expected, atol=1e-3)


def messy_nvm(tmp_path, num_points: int = 60, seed: int = 4):  # noqa: ANN001, ANN201
    """A valid NVM file with what real files have: TABs, CRLF, blank and comment lines, long tracks, a second model."""
    rng = np.random.default_rng(seed)
    poses = [random_pose(rng) for _ in range(5)]
    lengths = rng.integers(0, 12, num_points)
    lengths[3] = 60  # a line longer than the small blocks below
    meas = [[(int(rng.integers(5)), int(rng.integers(10**6)), *rng.normal(scale=300, size=2).round(3))
             for _ in range(n)] for n in lengths]
    path = write_nvm(tmp_path / "messy.nvm", [f"./c/rear/{k}.png" for k in range(5)], rng.uniform(300, 900, 5),
                     [p.qvec for p in poses], [p.center for p in poses], rng.normal(size=(num_points, 3)) * 100, meas)
    lines = path.read_text().splitlines()
    first_point = lines.index(str(num_points)) + 1
    lines[first_point + 10] = lines[first_point + 10].replace(" ", "\t", 3)
    lines.insert(first_point + 20, "")
    lines.insert(first_point + 30, "# a comment inside the point block")
    lines.insert(first_point + 31, "   ")
    lines += ["1", "x.jpg 1 1 0 0 0 0 0 0 0 0", "", "0", "0", "", "0", "PLY garbage follows"]
    path.write_bytes("\r\n".join(lines).encode())
    return path


@pytest.mark.parametrize("block_bytes", [37, 300, 1 << 20])
def test_nvm_vectorised_parse_equals_line_by_line(tmp_path, monkeypatch, block_bytes):
    path = messy_nvm(tmp_path)
    reference = read_nvm(path, method="lines")
    monkeypatch.setattr(nvm, "BLOCK_BYTES", block_bytes)
    fast = read_nvm(path, method="vectorised")
    assert fast.names == reference.names and len(fast.points_xyz) == 60
    for field in ("focals", "qvecs", "centers", "radial", "points_xyz", "obs_image", "obs_point", "obs_keypoint", "obs_xy"):
        a, b = getattr(fast, field), getattr(reference, field)
        assert a.dtype == b.dtype, field
        np.testing.assert_array_equal(a, b, err_msg=field)
    assert fast.obs_image.dtype == np.int32 and fast.obs_xy.dtype == np.float32


@pytest.mark.parametrize("content,line", [
    ("NVM_V3\n\n2\na.jpg 1 1 0 0 0 0 0 0 0 0\nb.jpg 1 1 0 0 0 0 0\n", 5),
    ("NVM_V3\n\n1\na.jpg 1 1 0 0 0 0 0 0 0 0\n\n1\n0 0 0 1 1 1 2 0 0 1 1\n", 7),
    ("NVM_V3\n\n1\na.jpg 1 1 0 0 0 0 0 0 0 0\n\n1\n0 0 0 1 1 1 1 3 0 1 1\n", 7),
    ("NVM_V3\n\nx\n", 3),
    ("VSFM\n", 1),
    ("NVM_V3\n\n1\na.jpg\t1 1 0 0 0 zz 0 0 0 0\n", 4),
])
@pytest.mark.parametrize("method", ["vectorised", "lines"])
def test_malformed_nvm_names_file_and_line(tmp_path, content, line, method):
    path = tmp_path / "bad.nvm"
    path.write_text(content)
    with pytest.raises(InputError) as info:
        read_nvm(path, method=method)
    assert f"bad.nvm:{line}:" in str(info.value)


@pytest.mark.parametrize("corrupt,message", [
    (lambda t: t[:3] + ["x1"] + t[4:], "non-numeric"),
    (lambda t: t[:8] + ["1.5.5"] + t[9:], "non-numeric"),  # numpy would read two numbers from one token
    (lambda t: t[:2] + ["1-2"] + t[3:], "non-numeric"),
    (lambda t: t[:6] + ["2.5"] + t[7:], "not a non-negative integer"),
    (lambda t: t[:6] + ["-1"] + t[7:], "not a non-negative integer"),
    (lambda t: t[:4], "needs 'X Y Z"),
    (lambda t: t[:-1], "declares"),
    (lambda t: t + ["0", "1", "2", "3"], "declares"),
    (lambda t: t[:7] + ["99"] + t[8:], "image index 99"),
    (lambda t: t[:7] + ["1.5"] + t[8:], "image index 1.5"),
    (lambda t: t[:8] + ["-1"] + t[9:], "feature index -1"),
    (lambda t: ["nan"] + t[1:], "non-finite point"),
    (lambda t: t[:9] + ["inf"] + t[10:], "non-finite measurement"),
])
@pytest.mark.parametrize("method", ["vectorised", "lines"])
def test_malformed_point_line_deep_in_the_file_is_located(tmp_path, monkeypatch, corrupt, message, method):
    rng = np.random.default_rng(5)
    poses = [random_pose(rng) for _ in range(3)]
    meas = [[(k % 3, k, 1.0, 2.0), ((k + 1) % 3, k, 3.0, 4.0)] for k in range(50)]
    path = write_nvm(tmp_path / "bad.nvm", ["a.jpg", "b.jpg", "c.jpg"], [500.0] * 3, [p.qvec for p in poses],
                     [p.center for p in poses], rng.normal(size=(50, 3)), meas)
    lines = path.read_text().split("\n")
    target = len(lines) - 12  # a point line in a later block
    lines[target] = " ".join(corrupt(lines[target].split()))
    path.write_text("\n".join(lines))
    monkeypatch.setattr(nvm, "BLOCK_BYTES", 512)
    with pytest.raises(InputError, match=rf"bad.nvm:{target + 1}: .*{message}"):
        read_nvm(path, method=method)


@pytest.mark.parametrize("method", ["vectorised", "lines"])
def test_nvm_with_missing_point_lines_is_a_clear_error(tmp_path, method):
    path = tmp_path / "short.nvm"
    path.write_text("NVM_V3\n\n1\na.jpg 1 1 0 0 0 0 0 0 0 0\n\n3\n0 0 0 1 1 1 0\n\n0 0 0 1 1 1 0\n")
    with pytest.raises(InputError, match=r"short.nvm: file ends early: missing point line 3 of 3"):
        read_nvm(path, method=method)


def test_nvm_crlf_and_tab_and_fixedk_header(tmp_path):
    path = tmp_path / "m.nvm"
    path.write_bytes(b"NVM_V3 FixedK 500 320 500 240 0\r\n\r\n1\r\n./x/rear/1.png\t500 1 0 0 0 1 2 3 0 0\r\n\r\n0\r\n\r\n0\r\n")
    model = read_nvm(path)
    assert model.names == ["./x/rear/1.png"] and len(model.points_xyz) == 0
    np.testing.assert_allclose(model.t_cam_from_world()[0], [-1, -2, -3])
    # No measurements: nothing to decide, nothing to convert.
    assert len(model.to_scene(model.names, size_cameras(640, 480, 1)).obs_xy) == 0


def test_nvm_with_old_mac_line_ends_is_read(tmp_path):
    path = tmp_path / "cr.nvm"
    path.write_bytes(b"NVM_V3\r\r1\rx.jpg 500 1 0 0 0 1 2 3 0 0\r\r1\r0 0 5 1 1 1 1 0 7 1.5 2.5\r")
    model = read_nvm(path)
    assert model.names == ["x.jpg"] and model.obs_keypoint.tolist() == [7] and model.obs_xy.tolist() == [[1.5, 2.5]]


# ------------------------------------------------------------------------------------ validation vs test queries


def _reader_cases(root):  # noqa: ANN001, ANN202
    """(label, reader) for every benchmark reader on its fixture, in each query mode that has validation."""
    from fixtures.datasets import make_aachen, make_cambridge, make_cmu, make_robotcar
    from fixtures.tiny import make_tiny_dataset

    from fuseloc.data.readers.aachen import AachenReader
    from fuseloc.data.readers.cambridge import CambridgeReader
    from fuseloc.data.readers.cmu import CMUReader
    from fuseloc.data.readers.generic import GenericReader
    from fuseloc.data.readers.posed_images import PosedImagesReader
    from fuseloc.data.readers.robotcar import RobotCarReader

    aachen, robotcar, cambridge = make_aachen(root / "aachen"), make_robotcar(root / "robotcar"), make_cambridge(root / "cam")
    cmu = make_cmu(root / "cmu", slices=(2,))
    # Training-style ground truth for the very test queries of slice 2 (as camera-poses/ may hold): a reader
    # must not hand them out for validation while it evaluates them.
    slice2 = cmu.root / "slice2"
    (slice2 / "camera-poses" / "q.txt").write_text("".join(
        f"{n.removeprefix('query/')} " + " ".join(f"{x:.12f}" for x in [*p.qvec, *p.center]) + "\n"
        for n, p in cmu.query_poses.items()))
    tiny = make_tiny_dataset(root / "tiny").root
    return [
        ("aachen", AachenReader(aachen.root)),
        ("robotcar test", RobotCarReader(robotcar.root, image_size=(256, 256))),
        ("robotcar train", RobotCarReader(robotcar.root, image_size=(256, 256), queries="train")),
        ("cmu test", CMUReader(cmu.root, slices=[2])),
        ("cmu train", CMUReader(cmu.root, slices=[2], queries="train")),
        ("cambridge colmap", CambridgeReader(cambridge.root, scenes=["ShopFacade"])),
        ("cambridge nvm", CambridgeReader(cambridge.root, scenes=["ShopFacade"], map_source="nvm",
                                             ground_truth="original")),
        ("generic", GenericReader(tiny)),
        ("posed images", PosedImagesReader(tiny, model="sparse")),
    ]


def test_no_reader_validates_on_its_evaluation_queries(tmp_path):
    """Checkpoints are selected on validation: validation names must be disjoint from the evaluated queries.

    (The embedded town's validation is a second rendering under other names: tests/test_synthetic.py checks it.)
    """
    seen = {}
    for label, reader in _reader_cases(tmp_path):
        for data in reader.load_parts():
            assert len(data.queries) > 0, label
            validation = [] if data.validation is None else data.validation.names
            training = [] if data.training_queries is None else data.training_queries.names
            assert not set(validation) & set(data.queries.names), label
            assert not set(training) & set(data.queries.names), label
            assert not set(training) & set(validation), label
            seen[label] = len(validation)
    # Readers with held-out posed queries still hand them out (RobotCar's training list while the test list is
    # evaluated); Cambridge's only posed queries are its test images, so it hands out none.
    assert seen["robotcar test"] == 1 and seen["robotcar train"] == 0
    assert seen["cambridge colmap"] == seen["cambridge nvm"] == 0
    assert seen["cmu test"] == seen["cmu train"] == 0


def test_validation_overlapping_the_evaluation_queries_is_dropped(caplog):
    from fuseloc.data.readers.base import BenchmarkSpec, LocalizationData

    cam = Camera("PINHOLE", 10, 10, (5, 5, 5, 5))
    queries = QuerySet(["q/1.jpg", "q/2.jpg"], [cam, cam])
    validation = QuerySet(["q/2.jpg", "v/3.jpg"], [cam, cam], [Pose.identity(), Pose.identity()])
    with caplog.at_level(logging.WARNING, logger="fuseloc.data.readers.base"):
        data = LocalizationData(None, queries, BenchmarkSpec("b"), Path("."), validation=validation)
    assert data.validation.names == ["v/3.jpg"]
    assert any("1 of 2 validation queries are also evaluation queries" in r.getMessage() for r in caplog.records)
    only_test = LocalizationData(None, queries, BenchmarkSpec("b"), Path("."), validation=queries.subset([1]))
    assert only_test.validation is None


def test_ground_truth_queries_split_once_per_condition_in_name_order():
    from fuseloc.data.readers.base import split_ground_truth_queries

    cam = Camera("PINHOLE", 10, 10, (5, 5, 5, 5))
    names = [f"night/{i}.jpg" for i in (3, 0, 2, 1)] + [f"dusk/{i}.jpg" for i in range(4)]
    conditions = ["night"] * 4 + ["dusk"] * 4
    queries = QuerySet(names, [cam] * 8, [Pose.identity()] * 8, conditions)
    train, val = split_ground_truth_queries(queries, 0.5)
    # one cut in name (time) order per condition: neighbouring frames stay on one side
    assert sorted(train.names) == ["dusk/0.jpg", "dusk/1.jpg", "night/0.jpg", "night/1.jpg"]
    assert sorted(val.names) == ["dusk/2.jpg", "dusk/3.jpg", "night/2.jpg", "night/3.jpg"]
    assert split_ground_truth_queries(queries, 0.0)[0] is None
    assert split_ground_truth_queries(queries, 1.0)[1] is None
    with pytest.raises(InputError, match="train_query_share"):
        split_ground_truth_queries(queries, 1.5)


def test_training_and_validation_queries_must_not_overlap():
    from fuseloc.data.readers.base import BenchmarkSpec, LocalizationData

    cam = Camera("PINHOLE", 10, 10, (5, 5, 5, 5))
    queries = QuerySet(["q/1.jpg"], [cam])
    posed = QuerySet(["v/3.jpg"], [cam], [Pose.identity()])
    with pytest.raises(InputError, match="both training and validation"):
        LocalizationData(None, queries, BenchmarkSpec("b"), Path("."), validation=posed, training_queries=posed)
