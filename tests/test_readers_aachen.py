"""Aachen Day-Night v1.1 reader on a tiny copy of the release layout, through evaluate.py to the submission."""

from __future__ import annotations

import logging

import pytest
from fixtures.datasets import make_aachen, run_and_check_submission

from fuseloc.data.readers.aachen import AachenReader
from fuseloc.errors import InputError


@pytest.fixture(scope="module")
def aachen(tmp_path_factory):
    return make_aachen(tmp_path_factory.mktemp("aachen_v1.1"))


@pytest.mark.slow  # evaluate.py end to end: SIFT, VLAD, map, PnP (several seconds)
def test_aachen_end_to_end_submission_uses_bare_names_and_world_to_camera(aachen, tmp_path):
    run_and_check_submission(AachenReader(aachen.root), aachen, tmp_path)


def test_aachen_only_listed_queries_with_day_night_conditions(aachen):
    data = AachenReader(aachen.root).load()
    assert data.queries.names == list(aachen.query_poses)  # the unlisted image in query/day/nexus4 is not a query
    assert data.queries.conditions == ["day", "night"]
    assert data.spec.split_of("night") == "night" and data.spec.submission_name(data.queries.names[1]) == "IMG_20161227_172439.jpg"
    assert data.scene.image_names[2] == "sequences/gopro3_undistorted/gopro3_00001.png"
    assert data.scene.image_cameras[0].model == "SIMPLE_RADIAL" and data.queries.cameras[0].params[3] == -0.005
    assert data.validation is None


def test_aachen_root_from_environment_variable(aachen, monkeypatch):
    monkeypatch.setenv("FUSELOC_DATA", str(aachen.root.parent))
    assert AachenReader(f"${{FUSELOC_DATA}}/{aachen.root.name}").load().root == aachen.root
    monkeypatch.delenv("FUSELOC_DATA")
    with pytest.raises(InputError, match="FUSELOC_DATA is not set"):
        AachenReader().load()
    with pytest.raises(InputError, match="not set"):
        AachenReader("${FUSELOC_DATA}/aachen").load()


def test_aachen_night_list_v1_1_name_is_preferred(aachen, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(aachen.root, root)
    night = root / "queries" / "night_time_queries_with_intrinsics.txt"
    night.rename(night.with_name("night_time_queries_with_intrinsics_v1_1.txt"))
    assert AachenReader(root).load().queries.conditions == ["day", "night"]  # the v1_1 name alone is read
    # both names present: the v1_1 list is used, not the older one (here one listing no night query)
    night.write_text("# the v1.0 list\n")
    assert AachenReader(root).load().queries.conditions == ["day", "night"]
    night.with_name("night_time_queries_with_intrinsics_v1_1.txt").write_text("# an empty v1_1 list\n")
    assert AachenReader(root).load().queries.conditions == ["day"]


def test_aachen_malformed_query_line_names_file_and_line(aachen, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("# comment\nquery/day/nexus4/IMG_20130101_120000.jpg SIMPLE_RADIAL 400 300 310 200\n")
    with pytest.raises(InputError, match=r"bad.txt:2: .*SIMPLE_RADIAL takes 4"):
        AachenReader(aachen.root, queries=[str(bad)]).load()
    bad.write_text("query/day/nexus4/missing.jpg SIMPLE_RADIAL 400 300 310 200 150 0\n")
    with pytest.raises(InputError, match=r"bad.txt:1: query image .*missing.jpg"):
        AachenReader(aachen.root, queries=[str(bad)]).load()


def test_aachen_warns_when_query_lists_are_not_the_release_counts(aachen, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="fuseloc.data.readers.aachen"):
        AachenReader(aachen.root).load()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "hold 1 day and 1 night queries" in warnings[0]
    assert "824 day and 191 night" in warnings[0]
    # Lists of the release's size (824 day, 191 night) load without a warning.
    line = " SIMPLE_RADIAL 400 300 310 200 150 0\n"
    day, night = tmp_path / "day.txt", tmp_path / "night.txt"
    day.write_text("".join(f"query/day/nexus4/IMG_{k:05d}.jpg{line}" for k in range(824)))
    night.write_text("".join(f"query/night/nexus5x/IMG_{k:05d}_n.jpg{line}" for k in range(191)))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fuseloc.data.readers.aachen"):
        data = AachenReader(aachen.root, queries=[str(day), str(night)], check_images=False).load()
    assert data.queries.conditions.count("night") == 191
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
    # One missing night query is enough to warn.
    night.write_text("".join(f"query/night/nexus5x/IMG_{k:05d}_n.jpg{line}" for k in range(190)))
    with caplog.at_level(logging.WARNING, logger="fuseloc.data.readers.aachen"):
        AachenReader(aachen.root, queries=[str(day), str(night)], check_images=False).load()
    assert any("824 day and 190 night" in r.getMessage() for r in caplog.records)
