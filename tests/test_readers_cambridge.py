"""Cambridge Landmarks reader: hloc's 1024-px models rescaled to full-resolution frames, original NVM and
dataset_*.txt poses, local median evaluation."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from fixtures.datasets import make_cambridge, run_and_check_submission

from fuseloc.data.readers.cambridge import CambridgeReader, pose_to_dataset_line, read_dataset_poses
from fuseloc.errors import InputError
from fuseloc.types import Pose


@pytest.fixture(scope="module")
def cambridge(tmp_path_factory):
    return make_cambridge(tmp_path_factory.mktemp("cambridge"))


@pytest.mark.slow  # evaluate.py end to end: SIFT, VLAD, map, PnP (several seconds)
def test_cambridge_end_to_end_reports_medians(cambridge, tmp_path, capsys):
    run_and_check_submission(CambridgeReader(cambridge.root, scenes=["ShopFacade"]), cambridge, tmp_path)
    summary = json.loads((tmp_path / "cambridge" / "ShopFacade" / "local-only" / "summary.json").read_text())
    assert summary["metrics"]["ShopFacade"]["median_t_m"] < 0.05
    assert "med t (cm)" in capsys.readouterr().out


def test_cambridge_scales_1024px_model_to_image_resolution(cambridge):
    data = CambridgeReader(cambridge.root, scenes=["ShopFacade"]).load()
    assert data.spec.report == "median" and data.part == "ShopFacade"
    # Its only posed queries are the test images: no validation set (training holds out database images).
    assert data.validation is None
    cam = data.scene.image_cameras[0]
    assert (cam.width, cam.height) == (960, 540) and cam.params == pytest.approx((562.5, 480.0, 270.0, 0.0))
    assert data.queries.names == ["ShopFacade/seq2/frame00001.png", "ShopFacade/seq2/frame00002.png"]
    assert data.queries.cameras[0] == cam
    # Scaled observations are where the map points project in the full-resolution frames.
    pose = data.scene.pose(0)
    obs = data.scene.obs_image == 0
    p = pose.transform(data.scene.points_xyz[data.scene.obs_point[obs]])
    np.testing.assert_allclose(p[:, :2] / p[:, 2:] * 562.5 + [480.0, 270.0], data.scene.obs_xy[obs], atol=1e-2)
    for name, gt in zip(data.queries.names, data.queries.gt_poses):
        np.testing.assert_allclose(gt.t, cambridge.query_poses[name].t, atol=1e-9)


def test_cambridge_original_poses_and_nvm_map_agree_with_colmap(cambridge):
    colmap = CambridgeReader(cambridge.root, scenes=["ShopFacade"]).load()
    original = CambridgeReader(cambridge.root, scenes=["ShopFacade"], ground_truth="original").load()
    nvm = CambridgeReader(cambridge.root, scenes=["ShopFacade"], map_source="nvm").load()
    for a, b, c in zip(colmap.queries.gt_poses, original.queries.gt_poses, nvm.queries.gt_poses):
        np.testing.assert_allclose(a.t, b.t, atol=1e-9)
        np.testing.assert_allclose(a.R, c.R, atol=1e-9)
    assert nvm.scene.image_names == colmap.scene.image_names  # .jpg NVM names -> .png, training images only
    np.testing.assert_allclose(nvm.scene.t_cam_from_world, colmap.scene.t_cam_from_world, atol=1e-9)
    assert len(nvm.scene.obs_point) == len(colmap.scene.obs_point)
    np.testing.assert_allclose(np.sort(nvm.scene.obs_xy, 0), np.sort(colmap.scene.obs_xy, 0), atol=1e-2)


def test_cambridge_dataset_line_round_trip(tmp_path):
    from scipy.spatial.transform import Rotation

    pose = Pose(Rotation.from_euler("xyz", [170, 5, -30], degrees=True).as_matrix(), np.array([10.0, -2.0, 40.0]))
    path = tmp_path / "dataset_test.txt"
    path.write_text("Visual Landmark Dataset V1\nImageFile, Camera Position [X Y Z W P Q R]\n\n"
                    + pose_to_dataset_line("seq2/frame00001.png", pose) + "\n"
                    + "seq2/frame00002.png 1e9 0 0 1 0 0 0\n")
    poses = read_dataset_poses(path)
    back = poses["seq2/frame00001.png"]
    np.testing.assert_allclose(back.R, pose.R, atol=1e-8)
    np.testing.assert_allclose(back.t, pose.t, atol=1e-6)
    assert poses["seq2/frame00002.png"] is None  # degenerate |t| > 10 km entry kept as "no pose"


@pytest.mark.parametrize("file,content,line,message", [
    ("ShopFacade/dataset_test.txt", "h\nh\n\nseq2/frame00001.png 1 2 3 1 0 0\n", 4, "8 fields"),
    ("ShopFacade/dataset_test.txt", "h\nh\n\n\nseq2/frame00001.png 1 2 3 1 0 0 x\n", 5, "numbers"),
    ("CambridgeLandmarks_Colmap_Retriangulated_1024px/ShopFacade/empty_all/cameras.txt", "1 SIMPLE_RADIAL 512 288 300\n", 1, "takes 4"),
])
def test_cambridge_malformed_lines_name_file_and_line(cambridge, tmp_path, file, content, line, message):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(cambridge.root, root)
    (root / file).write_text(content)
    with pytest.raises(InputError, match=f"{file.split('/')[-1]}:{line}: .*{message}"):
        CambridgeReader(root, scenes=["ShopFacade"], ground_truth="original").load()


def test_cambridge_accepts_linux_query_list_name_UNSURE(cambridge, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(cambridge.root, root)
    hloc = root / "CambridgeLandmarks_Colmap_Retriangulated_1024px" / "ShopFacade"
    (hloc / "list_query.txt").rename(hloc / "list_query_linux.txt")
    assert len(CambridgeReader(root, scenes=["ShopFacade"]).load().queries) == 2


def test_cambridge_nvm_is_read_as_centre_relative_and_override_obeyed(cambridge, caplog):
    with caplog.at_level(logging.INFO, logger="fuseloc.data.readers.nvm"):
        auto = CambridgeReader(cambridge.root, scenes=["ShopFacade"], map_source="nvm").load()
    assert any("reconstruction.nvm: measurements are centre-relative pixels" in r.getMessage() for r in caplog.records)
    assert auto.validation is None
    # Observations are where the known poses project the points (principal point at the image centre).
    pose, obs = auto.scene.pose(0), auto.scene.obs_image == 0
    p = pose.transform(auto.scene.points_xyz[auto.scene.obs_point[obs]])
    np.testing.assert_allclose(p[:, :2] / p[:, 2:] * 562.5 + [480.0, 270.0], auto.scene.obs_xy[obs], atol=1e-2)
    forced = CambridgeReader(cambridge.root, scenes=["ShopFacade"], map_source="nvm", measurements="absolute").load()
    np.testing.assert_allclose(forced.scene.obs_xy, auto.scene.obs_xy - [480.0, 270.0], atol=1e-3)
