import numpy as np
import pytest

from fuseloc.errors import InputError
from fuseloc.types import Camera, Pose, qvec_to_rotmat, rotmat_to_qvec


def test_quaternion_matches_hand_computed_rotation():
    # 90 degrees about z: x -> y.
    q = np.array([np.cos(np.pi / 4), 0, 0, np.sin(np.pi / 4)])
    np.testing.assert_allclose(qvec_to_rotmat(q) @ [1, 0, 0], [0, 1, 0], atol=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_quaternion_round_trip(seed):
    q = np.random.default_rng(seed).standard_normal(4)
    q /= np.linalg.norm(q)
    q *= np.sign(q[0])
    np.testing.assert_allclose(rotmat_to_qvec(qvec_to_rotmat(q)), q, atol=1e-10)


def test_pose_center_and_line_round_trip():
    pose = Pose.from_center([0.9, 0.1, -0.3, 0.2], [1.0, 2.0, 3.0])
    np.testing.assert_allclose(pose.center, [1, 2, 3], atol=1e-12)
    tokens = pose.to_line("a/b.jpg").split()
    again = Pose.from_qt([float(v) for v in tokens[1:5]], [float(v) for v in tokens[5:8]])
    np.testing.assert_allclose(again.R, pose.R, atol=1e-9)
    np.testing.assert_allclose(again.t, pose.t, atol=1e-9)
    assert tokens[0] == "a/b.jpg"


def test_camera_parsing_and_errors():
    cam = Camera.from_tokens("SIMPLE_RADIAL 1600 1200 1469.2 800 600 -0.02".split())
    assert cam.focal == pytest.approx(1469.2)
    assert cam.to_poselib()["params"] == [1469.2, 800, 600, -0.02]
    assert cam.scaled(0.5).params[:3] == (734.6, 400, 300)
    with pytest.raises(InputError, match="unknown camera model 'FISHY'"):
        Camera.from_tokens("FISHY 10 10 1 2 3".split())
    with pytest.raises(InputError, match="takes 4 parameters"):
        Camera.from_tokens("PINHOLE 10 10 1 2 3".split())
