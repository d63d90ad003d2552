"""fuseloc's R2D2 reproduces the official multi-scale extraction (naver/r2d2 ``extract.py``) on a real photo.

Uses the shared release weights and the reference h5 made with the official code (see
benchmarks/check_reference_features.py). One image (about 40 s on 2 CPU cores); the benchmark script runs both.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fixtures.scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
WEIGHTS = SHARED / "weights" / "r2d2_WASF_N16.pt"
REFERENCE = SHARED / "reference" / "r2d2_official_multiscale.h5"
IMAGES = SHARED / "data" / "strecha" / "fountain-P11" / "images"


@pytest.fixture(scope="module")
def shared_files() -> None:
    missing = [p for p in (WEIGHTS, REFERENCE, IMAGES / "0000.jpg") if not p.is_file()]
    if missing:
        pytest.skip(f"shared R2D2 reference material not found: {', '.join(map(str, missing))}")


@pytest.mark.slow
def test_r2d2_matches_the_official_multiscale_extraction(shared_files):
    check = load_script("benchmarks/check_reference_features")
    (result,) = check.run_check(WEIGHTS, REFERENCE, IMAGES, names=["0000.jpg"])
    assert result.num_reference == 5000 and result.num_fuseloc == 5000
    agreement, cosine = check.summary([result])
    assert agreement >= 0.95, agreement
    assert cosine >= 0.999, cosine
    # the conversion of the release's coordinates matters: read without the per-scale half-pixel shift,
    # fewer keypoints agree, so the check can tell the conventions apart
    assert result.matched_unshifted < result.matched
    assert np.all(result.cosines <= 1 + 1e-5)


def test_reference_settings_parse_the_source_attribute():
    check = load_script("benchmarks/check_reference_features")
    attrs = {"source": "official extract.py, scale_f=2**0.25, min_size=256, max_size=1024, min_scale=0, "
                       "max_scale=1, rel_thr=0.7, rep_thr=0.7, top_k=5000 by score"}
    settings = check.reference_settings(attrs)
    assert settings == {"scale_f": 2**0.25, "min_size": 256, "max_size": 1024, "min_scale": 0, "max_scale": 1,
                        "rel_thr": 0.7, "rep_thr": 0.7, "top_k": 5000}


def test_reference_keypoints_move_to_level_pixel_centres():
    check = load_script("benchmarks/check_reference_features")

    class _Levels:  # the pyramid of a 683 x 1024 image with the release's settings
        def levels(self, height, width):
            from fuseloc.data.extractors.r2d2 import pyramid_levels

            return pyramid_levels(height, width)

    # release keypoints: level pixel (10, 20) at scale 1 (size 32) and at scale 1/2 (size 64, level 512 x 342)
    kp = np.array([[10.0, 20.0], [10 * 1024 / 512, 20 * 683 / 342]])
    got = check.reference_to_colmap(kp, np.array([32.0, 64.0]), 1024, 683, _Levels())
    np.testing.assert_allclose(got, [[10.5, 20.5], [10.5 * 1024 / 512, 20.5 * 683 / 342]])
    with pytest.raises(ValueError, match="do not match the pyramid"):
        check.reference_to_colmap(kp, np.array([32.0, 50.0]), 1024, 683, _Levels())
