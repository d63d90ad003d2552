"""Map bundles: evaluate.py --export_bundle, fuseloc.load_bundle / Bundle.localize, and localize.py.

On the tiny rendered dataset (:mod:`fixtures.tiny`): a bundle localizes the queries exactly as the evaluation
that exported it did, with its run caches deleted, from each input path (camera string, query list, EXIF).
"""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
from fixtures.bundle import CAMERA_STRING, assert_same_pose, evaluated, export, export_one_method
from fixtures.scripts import load_script
from fixtures.tiny import CAMERA

import fuseloc
from fuseloc.errors import InputError
from fuseloc.localize.bundle import MANIFEST, MAP_FILE, read_manifest

evaluate_cli = load_script("evaluate")
localize_cli = load_script("localize")


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path, Path]:
    return export_one_method(tmp_path_factory.mktemp("bundle"))


def test_bundle_holds_what_localization_needs(exported):
    _, _, bundle = exported
    manifest = read_manifest(bundle)
    assert manifest["method"] == "fused-lam0.5" and manifest["config_hash"]
    assert manifest["local_features"]["class_path"] == "fuseloc.data.extractors.sift.Sift"
    assert manifest["global_features"]["state_file"] == "global_state.npz"  # the VLAD vocabulary
    assert manifest["index"] == {"kind": "flat", "file": None}  # an exact index is rebuilt from the map
    assert sorted(p.name for p in bundle.iterdir()) == ["bundle.json", "global_state.npz", "map.h5"]


def test_api_localizes_as_the_evaluation_without_its_caches(exported):
    data, method_dir, bundle_path = exported
    bundle = fuseloc.load_bundle(bundle_path)
    expected = evaluated(method_dir)
    for name in sorted(expected):
        result = bundle.localize(data / "images" / name, CAMERA_STRING, name=name)
        assert isinstance(result, fuseloc.LocalizationResult) and result.success
        assert_same_pose(result.to_record(), expected[name])
        assert {"decode", "local_features", "global_features", "fusion", "search", "pnp", "total"} <= set(result.timings)
        # the same photo as bytes and as pixels (with a Camera object): the same pose
        from_bytes = bundle.localize((data / "images" / name).read_bytes(), CAMERA, name=name)
        pixels = cv2.cvtColor(cv2.imread(str(data / "images" / name)), cv2.COLOR_BGR2RGB)
        from_pixels = bundle.localize(pixels, CAMERA, name=name)
        for other in (from_bytes, from_pixels):
            assert_same_pose(other.to_record(), expected[name])


def test_concurrent_calls_give_the_sequential_results(exported):
    data, method_dir, bundle_path = exported
    bundle = fuseloc.load_bundle(bundle_path)
    names = sorted(evaluated(method_dir)) * 4
    sequential = [bundle.localize(data / "images" / n, CAMERA, name=n).to_record() for n in names]
    with ThreadPoolExecutor(8) as pool:
        concurrent = list(pool.map(lambda n: bundle.localize(data / "images" / n, CAMERA, name=n).to_record(), names))
    for a, b in zip(sequential, concurrent, strict=True):
        assert_same_pose(a, b, atol=0)


def test_cli_query_list_writes_poses_records_and_drawings(exported, tmp_path, capsys):
    data, method_dir, bundle = exported
    out = tmp_path / "loc"
    assert localize_cli.main(["--bundle", str(bundle), "--queries", str(data / "queries_with_intrinsics.txt"),
                              "--image_root", str(data / "images"), "--output", str(out), "--visualize"]) == 0
    assert (out / "poses.txt").read_text() == (method_dir / "submission.txt").read_text()
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 4 and all(line.endswith(" localized") for line in printed)
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    expected = evaluated(method_dir)
    for record in records:
        assert_same_pose(record, expected[record["name"]])
        assert record["camera_source"] == "list" and record["status"] == "localized" and record["reason"] == ""
        drawing = cv2.imread(str(out / "visualize" / Path(record["name"]).with_suffix(".jpg")))
        assert drawing.shape == (CAMERA.height, CAMERA.width, 3)
        assert (drawing[..., 1] > 150).sum() > 20  # green inlier dots were drawn


def test_cli_camera_string_on_a_folder(exported, tmp_path):
    data, method_dir, bundle = exported
    out = tmp_path / "loc"
    assert localize_cli.main(["--bundle", str(bundle), "--camera", CAMERA_STRING, str(data / "images" / "query"),
                              "--output", str(out), "--quiet"]) == 0
    records = {r["name"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    expected = evaluated(method_dir)
    assert sorted(records) == sorted(n.removeprefix("query/") for n in expected)  # named relative to the folder
    for name, record in records.items():
        assert_same_pose(record, expected[f"query/{name}"])
        assert record["camera_source"] == "given"


def _exif_photo(path: Path, pixels: np.ndarray, orientation: int, focal_35mm: int) -> None:
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = orientation
    exif.get_ifd(0x8769)[0xA405] = focal_35mm  # FocalLengthIn35mmFilm
    Image.fromarray(pixels).save(path, exif=exif, quality=95)


def test_exif_orientation_6_photo_gets_the_right_pose(exported, tmp_path):
    """A portrait photo: the sensor's pixels are stored turned, EXIF orientation 6 says how to display them.

    Intrinsics come from EXIF (35 mm-equivalent focal length), for the pixels as stored; the pose is the
    sensor's, so its centre and viewing direction are the upright render's."""
    from fixtures.tiny import QUERY_CENTERS, _poses, render

    pose = _poses(QUERY_CENTERS, 1)[2]
    upright = render(pose)  # 320 x 240
    stored = np.ascontiguousarray(np.rot90(upright, 1))  # turning it 90° clockwise (orientation 6) shows it upright
    # pycolmap: focal = f35 / 43.27 mm (the 35 mm frame's diagonal) x image diagonal; 28 mm gives 258.9 px (true 260)
    photo = tmp_path / "portrait.jpg"
    _exif_photo(photo, stored, 6, 28)
    bundle = fuseloc.load_bundle(exported[2])
    result = bundle.localize(photo)
    assert result.camera_source == "exif" and result.success
    assert (result.camera.width, result.camera.height) == (240, 320)
    assert result.camera.params[0] == pytest.approx(258.86, abs=0.05)
    assert np.linalg.norm(result.pose.center - pose.center) < 0.1
    axis = result.pose.R[2] @ pose.R[2]  # optical axes (third rows: camera z in world coordinates)
    assert np.degrees(np.arccos(np.clip(axis, -1, 1))) < 1.0
    # through the CLI as well, named by its file name
    out = tmp_path / "loc"
    assert localize_cli.main(["--bundle", str(exported[2]), str(photo), "--output", str(out), "--quiet"]) == 0
    assert json.loads((out / "results.jsonl").read_text())["camera_source"] == "exif"


def test_photo_without_exif_focal_is_refused_unless_guessing(exported, tmp_path):
    data, _, bundle_path = exported
    bundle = fuseloc.load_bundle(bundle_path)
    photo = data / "images" / "query" / "0.png"
    with pytest.raises(InputError, match="no EXIF focal length") as info:
        bundle.localize(photo)
    assert str(photo) in str(info.value)
    guessed = bundle.localize(photo, allow_guessed_focal=True)  # 1.2 x 320 px: a guess, reported as EXIF
    assert guessed.camera.params[0] == pytest.approx(384.0)


def test_size_that_contradicts_the_intrinsics_is_a_clear_error(exported, tmp_path, capsys):
    data, _, bundle_path = exported
    bundle = fuseloc.load_bundle(bundle_path)
    photo = data / "images" / "query" / "1.png"
    with pytest.raises(InputError, match="640x480") as info:
        bundle.localize(photo, "PINHOLE 640 480 520 520 320 240")
    assert str(photo) in str(info.value)
    out = tmp_path / "loc"
    code = localize_cli.main(["--bundle", str(bundle_path), "--camera", "PINHOLE 640 480 520 520 320 240", str(photo),
                              str(data / "images" / "query" / "2.png"), "--output", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        f"error: {photo}: image is 320x240 pixels but its camera says 640x480 (same aspect ratio: scale the "
        "intrinsics by 0.5, or use the image they were calibrated for)",
        f"error: {data / 'images' / 'query' / '2.png'}: image is 320x240 pixels but its camera says 640x480 (same "
        "aspect ratio: scale the intrinsics by 0.5, or use the image they were calibrated for)"]
    assert (out / "poses.txt").read_text() == ""  # no pose for a photo that could not be localized correctly
    statuses = [json.loads(line)["status"] for line in (out / "results.jsonl").read_text().splitlines()]
    assert statuses == ["error", "error"]


@pytest.mark.parametrize("camera, message", [("PINHOLE 320 240 -260 260 160 120", "focal length must be positive"),
                                              ("PINHOLE 320 240 nan 260 160 120", "non-finite"),
                                              ("PINHOLE 320 240 260", "takes 4 parameters")])
def test_bad_camera_strings_are_one_line_errors(exported, camera, message):
    data, _, bundle_path = exported
    with pytest.raises(InputError, match=message):
        fuseloc.load_bundle(bundle_path).localize(data / "images" / "query" / "0.png", camera)


def test_damaged_or_foreign_bundles_are_refused_by_name(exported, tmp_path):
    _, _, bundle = exported
    with pytest.raises(InputError, match="bundle folder not found"):
        fuseloc.load_bundle(tmp_path / "nothing")
    with pytest.raises(InputError, match="not a fuseloc bundle"):
        fuseloc.load_bundle(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    with open(copy / MAP_FILE, "r+b") as f:
        f.truncate(1000)
    with pytest.raises(InputError, match="truncated or replaced") as info:
        fuseloc.load_bundle(copy)
    assert str(copy / MAP_FILE) in str(info.value)
    shutil.rmtree(copy)
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    (copy / MANIFEST).write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(InputError, match="bundle format version 99"):
        fuseloc.load_bundle(copy)


def test_several_methods_and_an_approximate_index(tmp_path):
    """Two methods: PATH/<method>; an IVF index travels in the bundle and gives the evaluation's poses."""
    data, run, bundles = export(tmp_path, ["--lambdas", "[1.0, 0.5]", "--localizer.index.kind", "ivf"])
    assert sorted(p.name for p in bundles.iterdir()) == ["fused-lam0.5", "local-only"]
    shutil.rmtree(run / "cache")
    for method in ("local-only", "fused-lam0.5"):
        assert (bundles / method / "index.faiss").is_file()
        bundle = fuseloc.load_bundle(bundles / method)
        assert bundle.localizer.index.kind == "ivf"
        for name, record in evaluated(run / method).items():
            assert_same_pose(bundle.localize(data / "images" / name, CAMERA, name=name).to_record(), record)
    # an export never replaces a folder it did not write
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    from fuseloc.io import atomic_directory

    with pytest.raises(InputError, match="refusing to replace"):
        with atomic_directory(tmp_path / "mine", MANIFEST):
            pass
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_export_from_feature_files_is_refused_before_any_work(tmp_path):
    from fuseloc.data.config import DataConfig
    from fuseloc.data.readers.generic import GenericReader

    data = DataConfig(reader=GenericReader(tmp_path / "no-dataset"), local_features_path=tmp_path / "feats.h5",
                      output_dir=tmp_path / "out")
    with pytest.raises(InputError, match="--export_bundle needs the extractors"):
        evaluate_cli.evaluate(data=data, export_bundle=tmp_path / "b", progress=False)
    assert not (tmp_path / "out").exists()
