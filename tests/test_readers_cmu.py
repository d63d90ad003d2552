"""Extended CMU Seasons reader: per-slice parts, merged submission, OPENCV cameras, centre-convention poses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fixtures.datasets import make_cmu, run_and_check_submission

from fuseloc.data.readers.cmu import CMUReader, environment
from fuseloc.data.readers.generic import read_pose_list
from fuseloc.errors import InputError
from fuseloc.types import Pose


@pytest.fixture(scope="module")
def cmu(tmp_path_factory):
    return make_cmu(tmp_path_factory.mktemp("cmu_extended"))


@pytest.mark.slow  # evaluate.py end to end: SIFT, VLAD, map, PnP (several seconds)
def test_cmu_two_slices_merge_into_one_submission_with_basenames(cmu, tmp_path):
    submission = run_and_check_submission(CMUReader(cmu.root, slices=[2, 3]), cmu, tmp_path)
    assert len(submission) == 4 and all(name.startswith("img_") and "/" not in name for name in submission)
    assert (tmp_path / "cmu_extended" / "slice2" / "local-only" / "submission.txt").is_file()


def test_cmu_slice_parts_cameras_and_database_poses(cmu):
    reader = CMUReader(cmu.root, slices=[2, 3])
    with pytest.raises(InputError, match="load_parts"):
        reader.load()
    parts = reader.load_parts()
    assert [p.part for p in parts] == ["slice2", "slice3"]
    data = parts[0]
    assert data.scene.image_names[0].startswith("database/img_00200_c0_")
    assert [c.model for c in data.queries.cameras] == ["OPENCV", "OPENCV"]
    assert data.queries.cameras[1].params[0] == 873.382641  # c1 from the root intrinsics.txt
    assert data.queries.conditions == ["urban", "urban"] and data.validation is None
    gt = read_pose_list(cmu.root / "slice2" / "ground-truth-database-images-slice2.txt", centers=True)
    for k, name in enumerate(data.scene.image_names):
        truth = gt[name.removeprefix("database/")]
        np.testing.assert_allclose(data.scene.R_cam_from_world[k], truth.R, atol=1e-9)
        np.testing.assert_allclose(data.scene.t_cam_from_world[k], truth.t, atol=1e-9)
    assert CMUReader().slices == [2, 3, 4, 5, 6, 13, 14, 15, 16, 17, 18, 19, 20, 21]
    assert [environment(n) for n in (2, 13, 21)] == ["urban", "suburban", "park"]


def test_cmu_training_slice_camera_poses_skip_empty_files(cmu):
    data = CMUReader(cmu.root, slices=[7], queries="train", check_images=False)
    with pytest.raises(InputError, match="sparse|ground-truth-database"):
        data.load()  # slice 7 of the fixture has only camera-poses

def test_cmu_training_queries_come_from_camera_poses_skipping_empty_files(cmu, tmp_path):
    import shutil

    root = Path(shutil.copytree(cmu.root, tmp_path / "cmu"))
    shutil.copytree(root / "slice2" / "sparse", root / "slice7" / "sparse")  # a map for slice 7
    queries = CMUReader(root, slices=[7], queries="train", check_images=False).load().queries
    (name, truth), = cmu.extra["train"].items()  # x.txt's one line; empty.txt adds nothing and is no error
    assert queries.names == [name] and queries.conditions == ["urban"]
    np.testing.assert_allclose(queries.gt_poses[0].t, truth.t, atol=1e-9)
    np.testing.assert_allclose(queries.gt_poses[0].R, truth.R, atol=1e-9)


def test_cmu_centre_pose_line_round_trip(tmp_path):
    from scipy.spatial.transform import Rotation

    pose = Pose(Rotation.from_euler("xyz", [5, 50, -10], degrees=True).as_matrix(), np.array([3.0, 1.0, -2.0]))
    line = "img_00122_c0_1303398475046031us.jpg " + " ".join(f"{v:.15g}" for v in [*pose.qvec, *pose.center])
    (tmp_path / "p.txt").write_text(line + "\n")
    back = read_pose_list(tmp_path / "p.txt", centers=True)["img_00122_c0_1303398475046031us.jpg"]
    np.testing.assert_allclose(back.t, pose.t, atol=1e-12)
    (tmp_path / "s.txt").write_text(back.to_line("x.jpg") + "\n")
    sub = read_pose_list(tmp_path / "s.txt")["x.jpg"]
    np.testing.assert_allclose(sub.R, pose.R, atol=1e-8)
    np.testing.assert_allclose(sub.t, pose.t, atol=1e-8)


@pytest.mark.parametrize("file,content,line,message", [
    ("intrinsics.txt", "# c\nc0 OPENCV 1024 768 868 866 525 420 -0.4 0.18 0.0\n", 2, "OPENCV takes 8"),
    ("slice2/test-images-slice2.txt", "img_00250_c0_1303398500000000us.jpg\nimg_00251_c9_1303398500000001us.jpg\n", 2, "camera 'c9'"),
    ("slice2/test-images-slice2.txt", "img_00250_c0_missing.jpg\n", 1, "not found"),
])
def test_cmu_malformed_lines_name_file_and_line(cmu, tmp_path, file, content, line, message):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(cmu.root, root)
    (root / file).write_text(content)
    with pytest.raises(InputError, match=f"{file.split('/')[-1]}:{line}: .*{message}"):
        CMUReader(root, slices=[2]).load()


def test_cmu_without_sparse_model_uses_ground_truth_poses_and_bad_line_is_located(cmu, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(cmu.root, root)
    shutil.rmtree(root / "slice2" / "sparse")
    data = CMUReader(root, slices=[2]).load()
    assert data.scene.num_points == 0 and data.scene.num_images == 2
    gt = root / "slice2" / "ground-truth-database-images-slice2.txt"
    gt.write_text(gt.read_text() + "img_00299_c0_1us.jpg 1 0 0\n")
    with pytest.raises(InputError, match=r"ground-truth-database-images-slice2.txt:3: "):
        CMUReader(root, slices=[2]).load()
