"""Issue 14: nothing lost, no wrong pose reported as right.

Each test reproduces one fault a hostile new user found (on the tiny rendered dataset of :mod:`fixtures.tiny`,
through evaluate.py's ``main``) and checks what the user now sees, what is left on disk, and what a rerun does.
Items 5, 7, 11 and the list-format part of 8 and 13 are rows of ``BAD_DATA`` in test_faults.py; item 6 is
``test_ckpt_path_last_resumes_...`` in test_train_smoke.py.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
from fixtures.tiny import CAMERA
from fixtures.tiny_runs import METHOD, data_args, run_main

from fuseloc.data.extract import extract_local_features, read_image
from fuseloc.data.extractors import Sift
from fuseloc.data.feature_cache import FeatureCache
from fuseloc.data.readers.base import BenchmarkSpec, LocalizationData
from fuseloc.data.readers.generic import GenericReader, read_query_list
from fuseloc.data.scene import QuerySet, Scene
from fuseloc.errors import InputError


def files_under(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def records(out: Path) -> dict[str, dict]:
    lines = (out / "custom" / METHOD / "predictions.jsonl").read_text().splitlines()
    return {r["name"]: r for r in map(json.loads, lines)}


# ----------------------------------------------------------------------------------- 1. overwrite and data loss


def test_overwrite_never_deletes_the_dataset_it_reads(data: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The reproduction: output_dir R, benchmark name '.', overwrite: it used to delete R, the whole dataset."""
    before = files_under(data)
    code, errors = run_main([*data_args(data, data, "--overwrite", "true"), "--data.reader.name", "."], caplog)
    assert code == 2 and errors == ["benchmark name '.' must be a plain folder name (it names the output folder)"]
    # the same folder reached with a plain name: output_dir is R's parent, the name is R's
    code, errors = run_main([*data_args(data, data.parent, "--overwrite", "true"), "--data.reader.name", data.name],
                            caplog)
    assert code == 2 and errors == [f"{data}: overwrite refused: this folder holds {data.resolve()}; nothing was deleted"]
    assert files_under(data) == before


def test_overwrite_deletes_only_a_folder_fuseloc_marked(data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    mine = out / "custom" / "notes.txt"  # the user's folder that happens to have the benchmark's name
    mine.parent.mkdir(parents=True)
    mine.write_text("keep me")
    code, errors = run_main(data_args(data, out, "--overwrite", "true"), caplog)
    assert code == 2 and mine.is_file()
    from fuseloc.io import OUTPUT_MARKER

    assert errors == [f"{out / 'custom'}: overwrite refused: the folder has no {OUTPUT_MARKER} marker, so "
                                    "fuseloc did not make it; nothing was deleted (delete it yourself if it is an old output)"]
    assert mine.read_text() == "keep me"
    # a folder fuseloc made and marked is deleted and rebuilt, but never while it holds the working directory
    mine.unlink()
    mine.parent.rmdir()
    assert run_main(data_args(data, out), caplog) == (0, [])
    assert (out / "custom" / OUTPUT_MARKER).is_file()
    monkeypatch.chdir(out / "custom" / METHOD)
    code, errors = run_main(data_args(data, out, "--overwrite", "true"), caplog)
    assert code == 2 and "overwrite refused: this folder holds" in errors[0]
    assert (out / "custom" / METHOD / "submission.txt").is_file()
    monkeypatch.chdir(tmp_path)
    assert run_main(data_args(data, out, "--overwrite", "true"), caplog) == (0, [])
    assert f"overwrite: deleted {out / 'custom'}" in caplog.text
    assert "extracting rootsift" in caplog.text  # from scratch


# ------------------------------------------------------------------------------ 2. results keyed by content


def test_a_replaced_query_image_is_localized_again(finished: Path, pristine: Path, tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """Same name, same intrinsics, new content: the old pose must not come back ("resuming, 4 of 4")."""
    data = Path(shutil.copytree(pristine, tmp_path / "data"))
    out = Path(shutil.copytree(finished, tmp_path / "out"))
    before = records(out)
    assert before["query/1.png"]["success"]
    cv2.imwrite(str(data / "images" / "query" / "1.png"), np.zeros((CAMERA.height, CAMERA.width, 3), np.uint8))
    assert run_main(data_args(data, out), caplog) == (0, [])
    assert "1 logged queries changed since they were localized (e.g. query/1.png); localizing them again" in caplog.text
    assert "resuming, 3 of 4 queries already localized" in caplog.text  # the others are kept
    after = records(out)
    assert after["query/1.png"]["success"] is False and "no keypoints" in after["query/1.png"]["reason"]
    assert {n: r["tvec"] for n, r in after.items() if n != "query/1.png"} == \
        {n: r["tvec"] for n, r in before.items() if n != "query/1.png"}
    submission = (out / "custom" / METHOD / "submission.txt").read_text()
    assert submission != (finished / "custom" / METHOD / "submission.txt").read_text()
    # and a rerun over unchanged images resumes everything
    assert run_main(data_args(data, out), caplog) == (0, [])
    assert "resuming, 4 of 4" in caplog.text and "changed since" not in caplog.text


def test_a_replaced_database_image_gets_a_new_map(finished: Path, pristine: Path, tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """A database image replaced under its name: new features, so a new fused map and new predictions."""
    data = Path(shutil.copytree(pristine, tmp_path / "data"))
    out = Path(shutil.copytree(finished, tmp_path / "out"))
    maps_before = {p.name for p in (out / "custom" / "cache").glob("map-*.h5")}
    image = data / "images" / "db" / "2.png"
    cv2.imwrite(str(image), cv2.flip(cv2.imread(str(image)), 1))
    assert run_main(data_args(data, out), caplog) == (0, [])
    assert {p.name for p in (out / "custom" / "cache").glob("map-*.h5")} - maps_before
    assert "configuration changed since the last run; discarding its predictions" in caplog.text


def test_the_map_key_holds_the_database_images_content(finished: Path) -> None:
    """A map read with its points from a model (no triangulation, whose key already had the content) must be
    rebuilt too when a database image is replaced: the map key carries the images' stamps."""
    from fuseloc.data.prepare import PreparedFeatures
    from fuseloc.eval.keys import map_inputs

    cache = next((finished / "custom" / "cache").glob("feats-*.h5"))
    scene = Scene.load(next((finished / "custom" / "cache").glob("sfm-*.npz")))
    with FeatureCache(cache) as features:
        before = map_inputs(scene, PreparedFeatures(features, "local", "global", database_key="stamps-a"))
        after = map_inputs(scene, PreparedFeatures(features, "local", "global", database_key="stamps-b"))
    assert before != after


# ------------------------------------------------------------------------------------------- 3. EXIF orientation


def jpeg_with_orientation(image: np.ndarray, orientation: int) -> bytes:
    """A JPEG of ``image`` (RGB) whose EXIF block says Orientation = ``orientation`` (6: rotate 90° clockwise)."""
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    # TIFF header (big-endian), one IFD entry: tag 0x0112 (Orientation), SHORT, count 1, the value
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8) + struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) \
        + struct.pack(">I", 0)
    payload = b"Exif\x00\x00" + tiff
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    data = encoded.tobytes()
    return data[:2] + app1 + data[2:]


def test_exif_orientation_is_not_applied_to_database_or_query_images(tmp_path: Path) -> None:
    image = np.zeros((CAMERA.height, CAMERA.width, 3), np.uint8)
    image[:40, :80] = 255  # a bright block top-left, as stored
    path = tmp_path / "images" / "q.jpg"
    path.parent.mkdir()
    path.write_bytes(jpeg_with_orientation(image, 6))
    assert cv2.imread(str(path)).shape[:2] == (CAMERA.width, CAMERA.height)  # OpenCV's default rotates it
    decoded = read_image(path)
    assert decoded.shape == (CAMERA.height, CAMERA.width, 3)  # as stored: the camera's 320 x 240
    assert decoded[:40, :80].mean() > 200 and decoded[-40:, -80:].mean() < 50
    from fuseloc.data.extract import check_image_size

    check_image_size(path, (decoded.shape[1], decoded.shape[0]), CAMERA)  # fits the intrinsics as given
    # extraction (database and queries alike) records the stored size
    feats = extract_local_features(Sift(max_keypoints=64), tmp_path / "images", ["q.jpg"], tmp_path / "f.h5",
                                   progress=False)
    with FeatureCache(feats) as cache:
        assert cache.image_size("q.jpg") == (CAMERA.width, CAMERA.height)


# ------------------------------------------------------------------------------------- 4. image size vs camera


def test_an_image_of_another_size_than_its_camera_is_an_error_naming_both(data: Path, tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    """A query twice the size of its intrinsics used to be localized "successfully", far off."""
    query = data / "images" / "query" / "2.png"
    cv2.imwrite(str(query), cv2.resize(cv2.imread(str(query)), (640, 480)))
    out = tmp_path / "out"
    code, errors = run_main(data_args(data, out), caplog)
    assert code == 2 and errors == [f"{query}: image is 640x480 pixels but its camera says 320x240 (same aspect ratio: "
                                    "scale the intrinsics by 2, or use the image they were calibrated for)"]
    assert not list(out.rglob("predictions.jsonl")) and not list(out.rglob("map-*"))
    cv2.imwrite(str(query), cv2.resize(cv2.imread(str(query)), (320, 200)))  # another aspect ratio: no hint
    code, errors = run_main(data_args(data, out), caplog)
    assert code == 2 and errors == [f"{query}: image is 320x200 pixels but its camera says 320x240"]


# ---------------------------------------------------------------------- 8, 12. empty work and late validation

LATE = {
    "no method": (["--lambdas", "[]"], "nothing to evaluate: lambdas is empty and neither --checkpoint nor "
                                       "--hierarchical true is given"),
    "lambda above 1": (["--lambdas", "[1.5]"], "lambdas must be in [0, 1] (1: local-only), got 1.5"),
    "lambda twice": (["--lambdas", "[0.5, 0.5]"], "lambdas lists a value twice: [0.5, 0.5]"),
    "top_k 0": (["--hierarchical", "true", "--top_k", "0"], "top_k must be at least 1, got 0"),
    "min_inliers 2": (["--localizer.min_inliers", "2"], "min_inliers must be at least 4 (3 matches always fit a pose), got 2"),
    "ratio 0": (["--localizer.ratio_threshold", "0"], "ratio_threshold must be in (0, 1] (1: no ratio test), got 0.0"),
    "negative RANSAC threshold": (["--localizer.pnp.max_reproj_error", "-1"],
                                  "pnp.max_reproj_error must be a positive number of pixels, got -1.0"),
}


@pytest.mark.parametrize("case", list(LATE))
def test_every_option_is_checked_before_any_work(case: str, pristine: Path, tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    args, expected = LATE[case]
    out = tmp_path / "out"
    code, errors = run_main([*data_args(pristine, out), *args], caplog)
    assert code == 2 and errors == [expected]
    assert not out.exists()  # no features, no map, no empty hierarchical-top0/


# ------------------------------------------------------------------------------ 9. an output_dir one cannot use


def test_an_output_dir_that_is_a_file_is_one_line(pristine: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "out"
    out.write_text("not a folder")
    code, errors = run_main(data_args(pristine, out), caplog)
    assert code == 2 and errors == [f"{out}: output folder: this path is a file, not a folder"]
    assert out.read_text() == "not a folder"


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_a_read_only_output_dir_is_one_line(pristine: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    out.mkdir()
    if os.geteuid() == 0:  # root writes anywhere: make the folder unwritable the way root also meets it
        monkeypatch.setattr(Path, "mkdir", _denied_mkdir)
    else:
        out.chmod(0o500)
    try:
        code, errors = run_main(data_args(pristine, out), caplog)
    finally:
        out.chmod(0o700)
    assert code == 2 and errors == [f"{out / 'custom'}: output folder is not writable"]


def _denied_mkdir(self: Path, *args: object, **kwargs: object) -> None:
    raise PermissionError(13, "Permission denied", str(self))


# ------------------------------------------------------------------------------------ 10. damaged derived caches


def test_truncated_triangulation_and_map_caches_are_rebuilt(finished: Path, pristine: Path, tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    out = Path(shutil.copytree(finished, tmp_path / "out"))
    shutil.rmtree(out / "custom" / METHOD)
    cache = out / "custom" / "cache"
    damaged = [next(cache.glob("sfm-*.npz")), next(cache.glob("map-*.h5"))]
    for path in damaged:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert run_main(data_args(pristine, out), caplog) == (0, [])
    for what, path in zip(("triangulated map", "fused map"), damaged, strict=True):
        assert f"{what} {path} is unreadable" in caplog.text
    Scene.load(damaged[0])  # rebuilt in place, whole
    rebuilt, reference = records(out), records(finished)
    assert {n: (r["tvec"], r["success"]) for n, r in rebuilt.items()} == \
        {n: (r["tvec"], r["success"]) for n, r in reference.items()}
    assert run_main(data_args(pristine, out), caplog) == (0, [])
    assert "unreadable" not in caplog.text  # healed for good


# --------------------------------------------------------------------------------------- 7, 13. small ones


def test_ground_truth_names_matching_no_query_are_counted_in_a_warning(data: Path, caplog: pytest.LogCaptureFixture) -> None:
    gt = data / "gt_poses.txt"
    gt.write_text(gt.read_text() + gt.read_text().splitlines()[0].replace("query/0.png", "query/typo.png") + "\n")
    caplog.set_level(logging.WARNING)
    loaded = GenericReader(data).load()
    assert loaded.queries.gt_poses is not None and all(p is not None for p in loaded.queries.gt_poses)
    assert f"{gt}: 1 of 5 ground-truth names match no query (e.g. 'query/typo.png'); they are ignored" in caplog.text


def test_a_byte_order_mark_is_not_part_of_the_first_name(data: Path) -> None:
    path = data / "queries_with_intrinsics.txt"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert read_query_list(path)[0].name == "query/0.png"
    assert GenericReader(data).load().queries.names[0] == "query/0.png"  # found on disk, not "missing"


def test_a_truncated_jpeg_is_decoded_with_a_warning_naming_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    image = (np.random.default_rng(0).random((240, 320, 3)) * 255).astype(np.uint8)
    path = tmp_path / "cut.jpg"
    ok, encoded = cv2.imencode(".jpg", image)
    path.write_bytes(encoded.tobytes()[: len(encoded) * 2 // 3])
    caplog.set_level(logging.WARNING)
    assert read_image(path).shape == (240, 320, 3)
    assert f"{path}: JPEG file is truncated (no end-of-image marker); using the part that decodes" in caplog.text
    caplog.clear()
    path.write_bytes(encoded.tobytes())
    read_image(path)
    assert "truncated" not in caplog.text


def test_a_query_that_is_also_a_database_image_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    scene = Scene(["a.png", "b.png"], [CAMERA, CAMERA], np.stack([np.eye(3)] * 2), np.zeros((2, 3)))
    caplog.set_level(logging.WARNING)
    LocalizationData(scene, QuerySet(["b.png", "q.png"], [CAMERA, CAMERA]), BenchmarkSpec("toy"), Path("."))
    assert "toy: 1 of 2 queries are also database images (e.g. 'b.png')" in caplog.text


def test_the_camera_and_image_size_checks_are_public_for_other_entry_points() -> None:
    from fuseloc.data.extract import check_image_size
    from fuseloc.types import Camera, check_camera_params

    with pytest.raises(InputError, match="focal length must be positive"):
        check_camera_params("SIMPLE_PINHOLE", (-1.0, 160.0, 120.0))
    with pytest.raises(InputError, match="focal length must be positive"):
        Camera("OPENCV", 320, 240, (260.0, 0.0, 160.0, 120.0, 0, 0, 0, 0))
    with pytest.raises(InputError, match=r"^q\.jpg: image is 240x320 pixels but its camera says 320x240$"):
        check_image_size("q.jpg", (240, 320), CAMERA)
