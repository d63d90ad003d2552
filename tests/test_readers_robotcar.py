"""RobotCar Seasons v2 reader on a tiny copy of the release layout, through evaluate.py to the submission."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
from fixtures.datasets import make_robotcar, run_and_check_submission

from fuseloc.data.readers.nvm import read_nvm
from fuseloc.data.readers.robotcar import RobotCarReader, camera_to_world_to_pose, pose_to_camera_to_world
from fuseloc.data.writers import write_nvm
from fuseloc.errors import InputError
from fuseloc.types import Pose


@pytest.fixture(scope="module")
def robotcar(tmp_path_factory):
    return make_robotcar(tmp_path_factory.mktemp("robotcar"))


def reader(root, **kwargs) -> RobotCarReader:
    return RobotCarReader(root, image_size=(256, 256), **kwargs)


@pytest.mark.slow  # evaluate.py end to end: SIFT, VLAD, map, PnP (several seconds)
def test_robotcar_end_to_end_submission_names_rear_timestamp_jpg(robotcar, tmp_path):
    submission = run_and_check_submission(reader(robotcar.root), robotcar, tmp_path)
    assert list(submission) == ["rear/1418235223450115.jpg"]


def test_robotcar_nvm_fixups_and_conditions(robotcar):
    data = reader(robotcar.root).load()
    assert data.scene.image_names == [v.name for v in robotcar.db_views]  # './' stripped, .png -> .jpg
    for k, view in enumerate(robotcar.db_views):
        np.testing.assert_allclose(data.scene.R_cam_from_world[k], view.pose.R, atol=1e-9)
        np.testing.assert_allclose(data.scene.t_cam_from_world[k], view.pose.t, atol=1e-9)
    assert data.scene.image_cameras[2].params == (100.0, 100.0, 125.027, 127.865)  # left intrinsics
    assert data.queries.names == ["night/rear/1418235223450115.jpg"] and data.queries.conditions == ["night"]
    assert data.spec.split_of("night-rain") == "night" and data.spec.split_of("overcast-winter") == "day"
    # Absolute NVM measurements (COLMAP's exporter) are the pixels the map points project to.
    pose = data.scene.pose(0)
    obs = data.scene.obs_image == 0
    cam = data.scene.image_cameras[0]
    p = pose.transform(data.scene.points_xyz[data.scene.obs_point[obs]])
    uv = p[:, :2] / p[:, 2:] * cam.params[0] + np.array(cam.params[2:])
    np.testing.assert_allclose(uv, data.scene.obs_xy[obs], atol=1e-3)


def test_robotcar_training_poses_are_camera_to_world_and_validate(robotcar):
    data = reader(robotcar.root).load()
    (name, truth), = robotcar.extra["train"].items()
    assert data.validation.names == [name] and data.validation.conditions == ["dusk"]
    np.testing.assert_allclose(data.validation.gt_poses[0].R, truth.R, atol=1e-9)
    np.testing.assert_allclose(data.validation.gt_poses[0].t, truth.t, atol=1e-9)
    train = reader(robotcar.root, queries="train").load()
    assert train.queries.has_ground_truth and train.queries.names == [name]
    # Evaluating the training queries: they must not also select checkpoints (holdout validation instead).
    assert train.validation is None


def test_robotcar_matrix_round_trip():
    from scipy.spatial.transform import Rotation

    pose = Pose(Rotation.from_euler("xyz", [10, -20, 30], degrees=True).as_matrix(), np.array([1.0, -2.0, 3.0]))
    M = pose_to_camera_to_world(pose)
    np.testing.assert_allclose(M[:3, 3], pose.center)  # the translation column is the camera centre
    back = camera_to_world_to_pose(M)
    np.testing.assert_allclose(back.R, pose.R, atol=1e-12)
    np.testing.assert_allclose(back.t, pose.t, atol=1e-12)


def test_robotcar_test_list_accepts_optional_condition_prefix_UNSURE(robotcar, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(robotcar.root, root)
    (root / "robotcar_v2_test.txt").write_text("night/rear/1418235223450115.png\n")
    assert reader(root).load().queries.names == ["night/rear/1418235223450115.jpg"]


@pytest.mark.parametrize("file,content,line,message", [
    ("robotcar_v2_test.txt", "rear/1418235223450115.png\nrear/999.png\n", 2, "not found in any condition"),
    ("robotcar_v2_test.txt", "1418235223450115.png\n", 1, "expected"),
    ("robotcar_v2_train.txt", "dusk/rear/1416907240474370.png " + " ".join(["1"] * 15) + "\n", 1, "16 numbers"),
    ("robotcar_v2_train.txt", "\n\ndusk/rear/1416907240474370.png " + " ".join(["2"] * 16) + "\n", 3, "rigid"),
    ("intrinsics/rear_intrinsics.txt", "fx 100\nfy\ncx 1\ncy 2\n", 2, "label value"),
    ("3D-models/all-merged/all.nvm", "NVM_V3\n\n1\n./overcast-reference/rear/1.png 1 1 0 0\n", 4, "11 fields"),
])
def test_robotcar_malformed_lines_name_file_and_line(robotcar, tmp_path, file, content, line, message):
    root = tmp_path / "copy"
    shutil.copytree(robotcar.root, root)
    (root / file).write_text(content)
    with pytest.raises(InputError, match=f"{file.split('/')[-1]}:{line}: .*{message}"):
        reader(root).load()


NVM = "3D-models/all-merged/all.nvm"


def rewrite_measurements(path, shift) -> None:  # noqa: ANN001
    """Rewrite an NVM file with every measurement moved by ``shift`` pixels."""
    model = read_nvm(path)
    tracks = [[] for _ in model.points_xyz]
    for img, point, feat, (x, y) in zip(model.obs_image, model.obs_point, model.obs_keypoint, model.obs_xy.astype(float)):
        tracks[point].append((int(img), int(feat), x + shift[0], y + shift[1]))
    write_nvm(path, model.names, model.focals, model.qvecs, model.centers, model.points_xyz, tracks)


def test_robotcar_absolute_all_nvm_detected_and_override(robotcar, caplog):
    with caplog.at_level(logging.INFO, logger="fuseloc.data.readers.nvm"):
        auto = reader(robotcar.root).load()
    assert any("all.nvm: measurements are absolute pixels" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fuseloc.data.readers.nvm"):
        forced = reader(robotcar.root, measurements="centered").load()
    # The override is obeyed (centre-relative reading adds W/2, H/2) and the disagreement is logged.
    np.testing.assert_allclose(forced.scene.obs_xy, auto.scene.obs_xy + 128.0, atol=1e-3)
    assert any("read as centered as configured, but they look absolute" in r.getMessage() for r in caplog.records)


def test_robotcar_centre_relative_all_nvm_reads_the_same(robotcar, tmp_path):
    """A VisualSFM-style (centre-relative) copy of the same model gives the same map."""
    root = tmp_path / "copy"
    shutil.copytree(robotcar.root, root)
    rewrite_measurements(root / NVM, (-128.0, -128.0))
    absolute = reader(robotcar.root).load().scene
    centered = reader(root).load().scene
    np.testing.assert_allclose(centered.obs_xy, absolute.obs_xy, atol=1e-3)
    np.testing.assert_array_equal(centered.obs_point, absolute.obs_point)


def test_robotcar_all_nvm_fitting_neither_convention_is_rejected(robotcar, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(robotcar.root, root)
    rewrite_measurements(root / NVM, (-64.0, 64.0))  # a quarter of the image off under either reading
    with pytest.raises(InputError, match=r"all.nvm: cannot tell whether NVM measurements are absolute or centre-relative"):
        reader(root).load()
    assert reader(root, measurements="absolute").load().scene.num_points > 0  # an explicit choice is obeyed
