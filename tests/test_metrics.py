import numpy as np
import pytest

from fuseloc.eval.metrics import pose_errors, recall_at, summarize
from fuseloc.types import Pose


def test_pose_errors_hand_computed():
    truth = Pose.identity()
    # camera moved 3 m along x and rotated 10 degrees about y
    a = np.deg2rad(10)
    R = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    estimate = Pose(R, -R @ np.array([3.0, 0, 0]))
    dt, dr = pose_errors(estimate, truth)
    assert dt == pytest.approx(3.0)
    assert dr == pytest.approx(10.0)
    assert pose_errors(None, truth) == (float("inf"), 180.0)


def test_recall_against_slow_reference():
    rng = np.random.default_rng(0)
    et, er = rng.exponential(1.0, 50), rng.exponential(5.0, 50)
    thresholds = [(0.25, 2.0), (0.5, 5.0), (5.0, 10.0)]
    expected = []
    for t, r in thresholds:
        hits = 0
        for a, b in zip(et, er):
            if a <= t and b <= r:
                hits += 1
        expected.append(100.0 * hits / len(et))
    assert recall_at(et, er, thresholds) == pytest.approx(expected)


def test_summary_keys_carry_units():
    s = summarize(np.array([0.1, 1.0, 10.0]), np.array([1.0, 1.0, 1.0]), [(0.25, 2.0), (5.0, 10.0)])
    assert s["recall_0.25m_2deg"] == pytest.approx(100 / 3)
    assert s["recall_5m_10deg"] == pytest.approx(200 / 3)
    assert s["median_t_m"] == pytest.approx(1.0)
    assert s["num_queries"] == 3
