import numpy as np
import pycolmap
import pytest

from fuseloc.data.readers.generic import GenericReader, read_pose_list, read_query_list
from fuseloc.data.scene import Scene
from fuseloc.errors import InputError


def _model(tmp_path, with_points=True):
    rec = pycolmap.Reconstruction()
    cam = pycolmap.Camera(camera_id=1, model="PINHOLE", width=64, height=48, params=[50.0, 50.0, 32.0, 24.0])
    rec.add_camera_with_trivial_rig(cam)
    for i in (1, 2):
        img = pycolmap.Image(name=f"db/{i}.png", camera_id=1, image_id=i,
                             keypoints=np.array([[10.0, 10.0], [20.0, 30.0]]))
        pose = pycolmap.Rigid3d(pycolmap.Rotation3d(np.eye(3)), np.array([0.1 * i, 0, 0]))
        rec.add_image_with_trivial_frame(img, pose)
    if with_points:
        track = pycolmap.Track()
        track.add_element(1, 0)
        track.add_element(2, 1)
        rec.add_point3D(np.array([0.0, 0.0, 5.0]), track)
    out = tmp_path / "sparse"
    out.mkdir()
    rec.write_text(str(out))
    return out


def test_scene_from_colmap_text(tmp_path):
    scene = Scene.from_colmap(_model(tmp_path))
    assert scene.image_names == ["db/1.png", "db/2.png"]
    assert scene.num_points == 1
    np.testing.assert_array_equal(scene.obs_image, [0, 1])
    np.testing.assert_array_equal(scene.obs_keypoint, [0, 1])
    np.testing.assert_allclose(scene.obs_xy, [[10, 10], [20, 30]])
    np.testing.assert_allclose(scene.t_cam_from_world[1], [0.2, 0, 0])


def _layout(tmp_path):
    _model(tmp_path)
    (tmp_path / "images" / "db").mkdir(parents=True)
    (tmp_path / "images" / "q").mkdir(parents=True)
    for name in ("db/1.png", "db/2.png", "q/a.png"):
        (tmp_path / "images" / name).write_bytes(b"x")
    (tmp_path / "queries_with_intrinsics.txt").write_text("# comment\nq/a.png PINHOLE 64 48 50 50 32 24\n")
    (tmp_path / "gt_poses.txt").write_text("q/a.png 1 0 0 0 0.5 0 0\n")
    (tmp_path / "query_conditions.txt").write_text("q/a.png night\n")


def test_generic_layout(tmp_path):
    _layout(tmp_path)
    data = GenericReader(tmp_path).load()
    assert data.queries.names == ["q/a.png"]
    assert data.queries.conditions == ["night"]
    np.testing.assert_allclose(data.queries.gt_poses[0].t, [0.5, 0, 0])


def test_missing_query_image_names_list_and_line(tmp_path):
    _layout(tmp_path)
    (tmp_path / "queries_with_intrinsics.txt").write_text("# c\n\nq/a.png PINHOLE 64 48 50 50 32 24\nq/b.png PINHOLE 64 48 50 50 32 24\n")
    with pytest.raises(InputError, match=r"queries_with_intrinsics.txt:4: query image 'q/b.png' not found"):
        GenericReader(tmp_path).load()


@pytest.mark.parametrize("line, message", [
    ("q/a.png PINHOLE 64 48 50 50 32", "takes 4 parameters"),
    ("q/a.png PINHOLE 64 x 50 50 32 24", "non-numeric"),
    ("q/a.png BANANA 64 48 50", "unknown camera model"),
    ("q/a.png", "expected 'name MODEL W H"),
])
def test_malformed_query_line(tmp_path, line, message):
    path = tmp_path / "q.txt"
    path.write_text("ok.png PINHOLE 1 1 1 1 1 1\n" + line + "\n")
    with pytest.raises(InputError, match=rf"q.txt:2: .*{message}"):
        read_query_list(path)


def test_malformed_pose_line(tmp_path):
    path = tmp_path / "gt.txt"
    path.write_text("a.png 1 0 0 0 0 0 0\nb.png 1 0 0 zero 0 0 0\n")
    with pytest.raises(InputError, match=r"gt.txt:2: expected numbers"):
        read_pose_list(path)
