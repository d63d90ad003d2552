"""Shared end-to-end check for the benchmark readers: evaluate.py on a fixture, then the submission file."""

from __future__ import annotations

from pathlib import Path

from fuseloc.data.extractors import Sift
from fuseloc.data.readers.generic import read_pose_list
from fuseloc.eval.metrics import pose_errors


def load_evaluate_script():  # noqa: ANN201 (a module)
    """The repository's evaluate.py as a module (it is a script at the root, not part of the package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "evaluate.py"
    spec = importlib.util.spec_from_file_location("fuseloc_evaluate_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_and_check_submission(reader, fixture, output_dir: Path, max_t: float = 0.05, max_r: float = 0.5) -> dict:  # noqa: ANN001
    """Run evaluate() (local-only matching) and check every expected line of the submission.

    Returns the parsed submission (submission name -> pose).
    """
    evaluate = load_evaluate_script()
    outcomes = evaluate.evaluate(data=reader, local_features=Sift(max_keypoints=1024), lambdas=[1.0],
                                 output_dir=output_dir, progress=False)
    submission_path = outcomes[0].output_dir / "submission.txt"
    lines = submission_path.read_text().splitlines()
    assert all(len(line.split(" ")) == 8 for line in lines), lines
    submission = read_pose_list(submission_path)
    assert set(submission) == set(fixture.submission_names.values())
    for name, truth in fixture.query_poses.items():
        dt, dr = pose_errors(submission[fixture.submission_names[name]], truth)
        assert dt < max_t and dr < max_r, (name, dt, dr)
    return submission
