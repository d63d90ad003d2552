"""Fault injection: every bad input ends in one clear line naming the file (and line), exit code 2, and leaves
nothing a later run would trust; a query that cannot be localized is reported as failed and the run goes on.

Runs evaluate.py's ``main`` in-process on copies of the tiny rendered dataset (:mod:`fixtures.tiny`).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
from fixtures.tiny_runs import METHOD, data_args, evaluate_cli, run_main

from fuseloc.data.feature_cache import FeatureCache, write_local
from fuseloc.data.scene import Scene
from fuseloc.errors import InputError
from fuseloc.localize.fused_map import build_fused_map
from fuseloc.models.fusion import FixedFusion
from fuseloc.types import LocalFeatures

REPO = Path(__file__).resolve().parents[1]
FEATS = "feats-rootsift-n2048-r1024-c0.02.h5"



def edit_line(path: Path, number: int, new: str) -> None:
    lines = path.read_text().splitlines()
    lines[number - 1] = new
    path.write_text("\n".join(lines) + "\n")


def replace_in(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


CAM = "PINHOLE 320 240 260 260 160 120"
# (what to damage, the error line expected: a regex matched against the message after the dataset root)
BAD_DATA: dict[str, tuple[Callable[[Path], None], str]] = {
    "query line too short": (lambda r: edit_line(r / "queries_with_intrinsics.txt", 3, "query/2.png PINHOLE 320"),
                             r"/queries_with_intrinsics\.txt:3: expected 'name MODEL W H params\.\.\.', got 'query/2\.png PINHOLE 320'"),
    "query line not numeric": (lambda r: edit_line(r / "queries_with_intrinsics.txt", 3, "query/2.png PINHOLE 320 abc 260 260 160 120"),
                               r"/queries_with_intrinsics\.txt:3: non-numeric camera field"),
    "query camera model unknown": (lambda r: edit_line(r / "queries_with_intrinsics.txt", 2, "query/1.png FISHEYE42 320 240 260 160 120"),
                                   r"/queries_with_intrinsics\.txt:2: unknown camera model 'FISHEYE42'"),
    "query camera with too few params": (lambda r: edit_line(r / "queries_with_intrinsics.txt", 4, "query/3.png PINHOLE 320 240 260 160 120"),
                                         r"/queries_with_intrinsics\.txt:4: camera model PINHOLE takes 4 parameters, got 3"),
    "model camera model unknown": (lambda r: replace_in(r / "sparse" / "cameras.txt", f"1 {CAM}", "1 FOO 320 240 260 260 160 120"),
                                   r"/sparse/cameras\.txt:2: unknown camera model 'FOO'"),
    "model image with unknown camera id": (lambda r: replace_in(r / "sparse" / "images.txt", " 1 db/3.png", " 7 db/3.png"),
                                           r"/sparse/images\.txt:8: image refers to camera id 7, which the cameras file does not define"),
    "model image missing on disk": (lambda r: (r / "images" / "db" / "3.png").unlink(),
                                    r"/sparse/images\.txt:8: database image 'db/3\.png' not found under "),
    "model without images": (lambda r: (r / "sparse" / "images.txt").write_text("# no images\n"),
                             r"/sparse/images\.txt: the COLMAP model has no images$"),
    "query image missing on disk": (lambda r: (r / "images" / "query" / "2.png").unlink(),
                                    r"/queries_with_intrinsics\.txt:3: query image 'query/2\.png' not found under "),
    "ground-truth line malformed": (lambda r: edit_line(r / "gt_poses.txt", 2, "query/1.png 1 0 0 0 0 0"),
                                    r"/gt_poses\.txt:2: expected 'name qw qx qy qz tx ty tz' \(8 fields\), got 7"),
    # issue 14 item 5: impossible cameras, where the camera is read
    "query camera with a negative focal": (lambda r: edit_line(r / "queries_with_intrinsics.txt", 3, "query/2.png PINHOLE 320 240 -260 260 160 120"),
                                           r"/queries_with_intrinsics\.txt:3: camera PINHOLE focal length must be positive, got -260 260$"),
    "query camera with a NaN focal": (lambda r: edit_line(r / "queries_with_intrinsics.txt", 2, "query/1.png SIMPLE_RADIAL 320 240 nan 160 120 0"),
                                      r"/queries_with_intrinsics\.txt:2: camera SIMPLE_RADIAL has a non-finite parameter: nan 160 120 0$"),
    "model camera with a zero focal": (lambda r: replace_in(r / "sparse" / "cameras.txt", f"1 {CAM}", "1 PINHOLE 320 240 260 0 160 120"),
                                       r"/sparse/cameras\.txt:2: camera PINHOLE focal length must be positive, got 260 0$"),
    # item 7: ground-truth mistakes
    "ground truth listed twice": (lambda r: (r / "gt_poses.txt").write_text((r / "gt_poses.txt").read_text()
                                                                             + "query/0.png 1 0 0 0 0 0 0\n"),
                                  r"/gt_poses\.txt:5: duplicate pose for 'query/0\.png' \(first on line 1\)$"),
    "ground truth with an infinite translation": (lambda r: edit_line(r / "gt_poses.txt", 2, "query/1.png 1 0 0 0 inf 0 0"),
                                                  r"/gt_poses\.txt:2: non-finite translation inf 0 0$"),
    "ground truth naming no query": (lambda r: (r / "gt_poses.txt").write_text(
                                         (r / "gt_poses.txt").read_text().replace("query/", "queries/")),
                                     r"/gt_poses\.txt: no ground-truth name matches a query \(e\.g\. 'queries/0\.png'"),
    # item 11: database pose problems
    "model image with an infinite translation": (lambda r: edit_line(r / "sparse" / "images.txt", 8, "4 1 0 0 0 0 inf 0 1 db/3.png"),
                                                 r"/sparse/images\.txt:8: image 'db/3\.png': non-finite translation 0 inf 0$"),
    "model image with a NaN quaternion": (lambda r: edit_line(r / "sparse" / "images.txt", 8, "4 nan 0 0 0 0 0 0 1 db/3.png"),
                                          r"/sparse/images\.txt:8: image 'db/3\.png': invalid quaternion nan 0 0 0$"),
    # items 8 and 13: an empty query list; a space in a query name
    "empty query list": (lambda r: (r / "queries_with_intrinsics.txt").write_text("# no queries\n"),
                         r"^: the dataset lists no queries: nothing to localize$"),
    "query name with a space": (lambda r: edit_line(r / "queries_with_intrinsics.txt", 3, "query/my 2.png PINHOLE 320 240 260 260 160 120"),
                                r"/queries_with_intrinsics\.txt:3: the name must be one field without spaces, but the camera "
                                r"model comes after 'query/my 2\.png'$"),
}


@pytest.mark.parametrize("fault", list(BAD_DATA))
def test_bad_dataset_gives_one_line_naming_file_and_line_and_writes_nothing(fault: str, data: Path, tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    damage, expected = BAD_DATA[fault]
    damage(data)
    out = tmp_path / "out"
    code, errors = run_main(data_args(data, out), caplog)
    assert code == 2
    assert len(errors) == 1 and "\n" not in errors[0], errors
    assert errors[0].startswith(str(data)) and re.search(expected, errors[0][len(str(data)):]), errors[0]
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*"))


def test_bad_input_in_a_subprocess_is_one_stderr_line_without_traceback(data: Path, tmp_path: Path) -> None:
    edit_line(data / "queries_with_intrinsics.txt", 2, "query/1.png FISHEYE42 320 240 260 160 120")
    result = subprocess.run([sys.executable, str(REPO / "evaluate.py"), *data_args(data, tmp_path / "out")],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and f"{data}/queries_with_intrinsics.txt:2: unknown camera model" in errors[0]
    assert "Traceback" not in result.stderr


# Every case but the missing root names a dataset that fails at once ("{nodata}"): an error that slipped through
# parsing must fail this test quickly, not start a long default run.
NODATA = ["--data.reader", "fuseloc.data.readers.generic.GenericReader", "--data.reader.root", "{nodata}"]
CONFIG_ERRORS = {
    "unknown key in a config file": ("data:\n  reader:\n    class_path: fuseloc.data.readers.generic.GenericReader\n"
                                     "    init_args:\n      root: {nodata}\n      bogus: 1\n", [],
                                     r"Option 'bogus' is not accepted"),
    "unknown top-level key": ("lambdas: [0.5]\nlambda: 3\n", NODATA, r"lambda"),
    "unknown nested key": ("localizer:\n  min_inliers: 12\n  min_inlier: 3\n", NODATA, r"min_inlier"),
    "a flat key of before the data and localizer sections": (None, [*NODATA, "--ransac_max_error", "8"],
                                                             r"unrecognized arguments: --ransac_max_error 8"),
    "wrong type": (None, [*NODATA, "--localizer.min_inliers", "many"],
                   r'Parser key "localizer.min_inliers": Expected a <class \'int\'>\. Got value: many'),
    "value outside a choice": (None, [*NODATA, "--reduction", "pcaa"], r'Parser key "reduction"'),
    "unknown option": (None, [*NODATA, "--bogus", "3"], r"unrecognized arguments: --bogus 3"),
    "abbreviated option": (None, [*NODATA, "--localizer.min_inlier", "3"],
                           r"unrecognized arguments: --localizer.min_inlier 3"),
    "missing required argument": (None, ["--data.reader", "fuseloc.data.readers.generic.GenericReader"], r"root"),
    "missing config file": (None, [*NODATA, "--config", "/nonexistent/eval.yaml"], r"/nonexistent/eval\.yaml"),
}


@pytest.mark.parametrize("fault", list(CONFIG_ERRORS))
def test_bad_configuration_is_one_clean_error_line(fault: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    yaml_text, args, expected = CONFIG_ERRORS[fault]
    nodata = str(tmp_path / "no-data")
    args = [a.replace("{nodata}", nodata) for a in args]
    if yaml_text is not None:
        (tmp_path / "bad.yaml").write_text(yaml_text.replace("{nodata}", nodata))
        args = [*args, "--config", str(tmp_path / "bad.yaml")]
    assert evaluate_cli.main([*args, "--data.output_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith("error: invalid configuration: ") and re.search(expected, err), err
    assert not (tmp_path / "out").exists()


def test_corrupt_image_is_named_and_the_extraction_resumes_once_it_is_fixed(data: Path, tmp_path: Path,
                                                                           caplog: pytest.LogCaptureFixture,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    image = data / "images" / "db" / "2.png"
    good = image.read_bytes()
    image.write_bytes(good[: len(good) // 3])  # a truncated download
    out = tmp_path / "out"
    code, errors = run_main(data_args(data, out), caplog)
    assert code == 2 and errors == [f"{image}: cannot decode image (corrupt or unsupported format)"]
    feats = out / "custom" / "cache" / FEATS
    with pytest.raises(InputError, match="interrupted run"):
        FeatureCache(feats)  # the partial cache is kept for resuming, but never read as if complete
    assert not list(out.rglob("map-*")) and not list(out.rglob("submission.txt"))
    image.write_bytes(good)
    from fuseloc.data import extract

    decoded: list[str] = []
    read_image = extract.read_image

    def read_and_record(path: Path) -> np.ndarray:
        decoded.append(Path(path).relative_to(data / "images").as_posix())
        return read_image(path)

    monkeypatch.setattr(extract, "read_image", read_and_record)
    code, errors = run_main(data_args(data, out), caplog)
    assert code == 0 and not errors
    # db/0 and db/1, extracted before the corrupt image stopped the run, are not extracted again
    assert sorted(decoded) == sorted(f"db/{k}.png" for k in range(2, 6)) + [f"query/{k}.png" for k in range(4)]


def test_black_query_image_is_a_failed_query_with_a_reason_and_the_run_goes_on(data: Path, tmp_path: Path,
                                                                               caplog: pytest.LogCaptureFixture) -> None:
    cv2.imwrite(str(data / "images" / "query" / "1.png"), np.zeros((240, 320, 3), np.uint8))
    out = tmp_path / "out"
    code, errors = run_main(data_args(data, out), caplog)
    assert code == 0 and not errors
    records = {json.loads(line)["name"]: json.loads(line) for line in (out / "custom" / METHOD / "predictions.jsonl").open()}
    assert records["query/1.png"]["success"] is False
    assert records["query/1.png"]["num_matches"] == 0
    assert "no keypoints detected" in records["query/1.png"]["reason"]
    assert len((out / "custom" / METHOD / "submission.txt").read_text().splitlines()) == 4  # a line for every query
    summary = json.loads((out / "custom" / METHOD / "summary.json").read_text())
    assert "query/1.png" in summary["failed"]


def test_nan_descriptors_in_a_cache_are_named(finished: Path, pristine: Path, tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    out = Path(shutil.copytree(finished, tmp_path / "out"))
    shutil.rmtree(out / "custom" / METHOD)  # the queries must be read again
    feats = out / "custom" / "cache" / FEATS
    with h5py.File(feats, "a") as f:
        desc = f["query/1.png"]["descriptors"]
        desc[0, 5] = np.nan
        desc[3, 7] = np.inf
    code, errors = run_main(data_args(pristine, out), caplog)
    assert code == 2 and errors == [f"{feats}: image 'query/1.png': descriptors contain NaN or infinite values"]
    assert not (out / "custom" / METHOD / "submission.txt").exists()


def test_transposed_hloc_descriptors_are_named(tmp_path: Path) -> None:
    """hloc stores descriptors D x N; a file written N x D must not be read as D keypoints' worth."""
    path = tmp_path / "feats-hloc.h5"
    with h5py.File(path, "w") as f:
        write_local(f, "db/a.jpg", LocalFeatures(np.zeros((50, 2), np.float32), np.ones((50, 128), np.float32),
                                                 np.ones(50, np.float32), (640, 480)))
        del f["db/a.jpg"]["descriptors"]
        f["db/a.jpg"].create_dataset("descriptors", data=np.ones((50, 128), np.float32))  # N x D: wrong
    with FeatureCache(path) as cache, pytest.raises(InputError) as info:
        cache.local("db/a.jpg")
    assert str(info.value) == (f"{path}: image 'db/a.jpg': 50 keypoints but descriptors stored as (50, 128), "
                               "expected D x 50 (hloc's layout: one column per keypoint)")


def test_descriptor_dimension_mismatch_is_named(finished: Path) -> None:
    """A fusion made for 64-D local descriptors (e.g. from a checkpoint) against a 128-D cache."""
    cache_dir = finished / "custom" / "cache"
    scene = Scene.load(next(cache_dir.glob("sfm-*.npz")))
    features = FeatureCache(cache_dir / FEATS, next(cache_dir.glob("global-feats-*.h5")))
    with features, pytest.raises(InputError) as info:
        build_fused_map(scene, features, FixedFusion(local_dim=64, global_dim=4096), progress=False)
    assert str(info.value) == (f"descriptor dimension mismatch in {cache_dir / FEATS}: fusion expects local 64-D and "
                               "global 4096-D, got 128-D and 4096-D")


def test_cache_from_another_configuration_is_refused_until_overwrite(finished: Path, pristine: Path, tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    out = Path(shutil.copytree(finished, tmp_path / "out"))
    feats = out / "custom" / "cache" / FEATS
    with h5py.File(feats, "a") as f:
        f.attrs["fuseloc_config"] = json.dumps({"name": "sift", "max_keypoints": 64})
    code, errors = run_main(data_args(pristine, out), caplog)
    assert code == 2 and len(errors) == 1
    assert errors[0].startswith(f"{feats}: feature cache was made with another configuration")
    assert "--overwrite true" in errors[0]
    with h5py.File(feats, "r") as f:  # refused, not modified
        assert json.loads(f.attrs["fuseloc_config"]) == {"name": "sift", "max_keypoints": 64}
    code, errors = run_main([*data_args(pristine, out), "--overwrite", "true"], caplog)
    assert code == 0 and not errors
    with h5py.File(feats, "r") as f:
        assert json.loads(f.attrs["fuseloc_config"])["max_keypoints"] == 2048


def test_changed_configuration_never_reuses_a_cache_or_prediction(finished: Path, pristine: Path, tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    out = Path(shutil.copytree(finished, tmp_path / "out"))
    cache_dir = out / "custom" / "cache"
    before = {p.name for p in cache_dir.iterdir()}
    args = [*data_args(pristine, out), "--data.global_features", "fuseloc.data.extractors.Vlad",
            "--data.global_features.seed", "1"]
    code, errors = run_main(args, caplog)
    assert code == 0 and not errors
    new = {p.name for p in cache_dir.iterdir()} - before
    # another VLAD vocabulary: its own global cache and its own map; local features and triangulation reused
    assert sorted(n.split("-")[0] for n in new) == ["global", "map"], new
    assert "configuration changed since the last run; discarding its predictions" in caplog.text
    code, errors = run_main([*args, "--localizer.min_inliers", "30"], caplog)
    assert code == 0 and not errors
    assert "configuration changed since the last run; discarding its predictions" in caplog.text
    assert {p.name for p in cache_dir.iterdir()} - before == new  # nothing rebuilt for a query-time setting


def test_missing_weight_file_of_a_configured_extractor_is_one_line_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                              capsys: pytest.CaptureFixture,
                                                                              caplog: pytest.LogCaptureFixture) -> None:
    # The extractor is built while the configuration is instantiated; its error must not become jsonargparse's
    # multi-line union report.
    monkeypatch.setattr("torch.hub.get_dir", lambda: str(tmp_path / "torch" / "hub"))
    code, errors = run_main(["--data.local_features", "fuseloc.data.extractors.D2Net",
                             "--data.output_dir", str(tmp_path / "out")], caplog)
    assert code == 2 and len(errors) == 1, errors
    assert "d2_tf.pth" in errors[0] and str(tmp_path / "torch") in errors[0] and "\n" not in errors[0]
    assert "Traceback" not in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
