"""Condition re-rendering (fuseloc/data/conditions.py): determinism, the direction of each look, the warp's
homography in COLMAP's pixel convention, and re-extracted keypoints that land on their source's point."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy import ndimage

from fuseloc.data.conditions import (
    KINDS,
    ConditionTransform,
    check_conditions,
    colmap_from_cv,
    cv_from_colmap,
    default_conditions,
    homography_from_corners,
    render_condition,
    warp_image,
    warp_points,
)
from fuseloc.data.observations import associate_by_radius
from fuseloc.errors import InputError


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[::2, ::2])  # 256 x 256 RGB uint8


def _gray(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float64)


def _saturation(image: np.ndarray) -> float:
    return float(cv2.cvtColor(image, cv2.COLOR_RGB2HSV)[..., 1].mean())


# ------------------------------------------------------------------------------------------ settings, determinism


@pytest.mark.parametrize("kwargs, words", [
    ({"strength": -0.1}, "strength"),
    ({"strength": float("nan")}, "finite"),
    ({"kind": "snow"}, "unknown kind"),
    ({"warp": 0.25}, "warp"),
    ({"warp": -0.01}, "warp"),
    ({"name": ""}, "name"),
    ({"name": "night/../x"}, "name"),
    ({"noise": -1.0}, "noise"),
    ({"blur": -1.0}, "blur"),
    ({"light_pools": -1}, "light_pools"),
    ({"light_pools": 2.5}, "light_pools"),
    ({"border": "wrap"}, "border"),
])
def test_invalid_settings_are_refused(kwargs, words):
    with pytest.raises(InputError, match=words):
        ConditionTransform(**kwargs)
    assert issubclass(InputError, ValueError)


def test_defaults_are_valid_and_distinct():
    conditions = default_conditions()
    assert {c.kind for c in conditions} >= {"night", "dusk", "overcast", "haze"}
    assert check_conditions(conditions) == conditions
    with pytest.raises(InputError, match="unique"):
        check_conditions([ConditionTransform("a", "night"), ConditionTransform("a", "dusk")])
    assert ConditionTransform().config()["render_version"] >= 1


def test_bad_inputs_are_refused(photo):
    t = ConditionTransform()
    with pytest.raises(InputError, match="uint8"):
        render_condition(photo.astype(np.float32), t, 0)
    with pytest.raises(InputError, match="uint8"):
        render_condition(photo[..., :2], t, 0)
    with pytest.raises(InputError, match="seed"):
        render_condition(photo, t, -1)
    with pytest.raises(InputError, match="seed"):
        render_condition(photo, t, "1")


@pytest.mark.parametrize("kind", KINDS)
def test_deterministic_by_seed_and_shape_kept(photo, kind):
    t = ConditionTransform(name=kind, kind=kind, warp=0.05)
    a, Ha = render_condition(photo, t, [7, 3])
    b, Hb = render_condition(photo, t, [7, 3])
    c, Hc = render_condition(photo, t, [7, 4])
    assert a.shape == photo.shape and a.dtype == np.uint8 and Ha.dtype == np.float64 and Ha.shape == (3, 3)
    assert a.tobytes() == b.tobytes() and np.array_equal(Ha, Hb)
    assert a.tobytes() != c.tobytes() and not np.allclose(Ha, Hc)
    assert not np.shares_memory(a, photo)


def test_grey_images_stay_grey(photo):
    grey = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY)
    out, _ = render_condition(grey, ConditionTransform(), 0)
    assert out.shape == grey.shape and out.dtype == np.uint8


@pytest.mark.parametrize("kind", KINDS)
def test_zero_strength_and_no_warp_is_identity(photo, kind):
    out, H = render_condition(photo, ConditionTransform(name=kind, kind=kind, strength=0.0), 5)
    assert np.array_equal(H, np.eye(3))
    assert np.abs(out.astype(int) - photo.astype(int)).max() <= 1


def test_warp_does_not_depend_on_the_photometry(photo):
    _, H_night = render_condition(photo, ConditionTransform("n", "night", warp=0.1), 11)
    _, H_haze = render_condition(photo, ConditionTransform("h", "haze", strength=2.0, warp=0.1), 11)
    assert np.array_equal(H_night, H_haze)


# ------------------------------------------------------------------------------------------------- directions


def test_night_is_darker_and_noisier(photo):
    for seed in range(4):
        out, _ = render_condition(photo, ConditionTransform(), seed)
        assert _gray(out).mean() < 0.55 * _gray(photo).mean()
    # Noise on a flat grey image: shot noise grows with brightness, none at strength 0.
    flat = np.full((96, 96, 3), 200, np.uint8)
    noisy, _ = render_condition(flat, ConditionTransform(blur=0.0, light_pools=0), 1)
    quiet, _ = render_condition(flat, ConditionTransform(noise=0.0, blur=0.0, light_pools=0), 1)
    assert _gray(noisy)[20:-20, 20:-20].std() > 2 * _gray(quiet)[20:-20, 20:-20].std() + 0.5


def test_night_strength_scales_the_darkening(photo):
    means = [_gray(render_condition(photo, ConditionTransform(strength=s), 2)[0]).mean() for s in (0.0, 0.5, 1.0)]
    assert means[0] > means[1] > means[2]


def test_dusk_is_darker_and_warmer(photo):
    for seed in range(3):
        out, _ = render_condition(photo, ConditionTransform("dusk", "dusk"), seed)
        assert _gray(out).mean() < 0.9 * _gray(photo).mean()
        red_blue = out[..., 0].astype(float).mean() / out[..., 2].astype(float).mean()
        assert red_blue > 1.1 * photo[..., 0].astype(float).mean() / photo[..., 2].astype(float).mean()


def test_overcast_is_flatter_and_less_saturated(photo):
    for seed in range(3):
        out, _ = render_condition(photo, ConditionTransform("overcast", "overcast"), seed)
        assert _saturation(out) < 0.75 * _saturation(photo)
        assert _gray(out).std() < 0.85 * _gray(photo).std()
        blue_red = out[..., 2].astype(float).mean() / out[..., 0].astype(float).mean()
        assert blue_red > photo[..., 2].astype(float).mean() / photo[..., 0].astype(float).mean()


def test_haze_lowers_contrast_more_at_the_top(photo):
    for seed in range(3):
        out, _ = render_condition(photo, ConditionTransform("haze", "haze"), seed)
        assert _gray(out).std() < 0.8 * _gray(photo).std()
        assert _gray(out).mean() > _gray(photo).mean()
    # On a checkerboard the contrast left is lower at the top (farther) than at the bottom.
    board = (((np.indices((128, 128)) // 8).sum(0) % 2) * 200 + 20).astype(np.uint8)
    board = np.repeat(board[..., None], 3, axis=2)
    out = _gray(render_condition(board, ConditionTransform("haze", "haze", blur=0.0), 0)[0])
    assert out[:32].std() < 0.8 * out[-32:].std()


def test_exposure_jitters_both_ways(photo):
    ratios = [_gray(render_condition(photo, ConditionTransform("e", "exposure"), s)[0]).mean() / _gray(photo).mean()
              for s in range(12)]
    assert min(ratios) < 0.9 and max(ratios) > 1.1


# --------------------------------------------------------------------------------------------------- geometry


def _dots(shape: tuple[int, int], centres_ij: np.ndarray, sigma: float = 1.4) -> np.ndarray:
    """Black image with Gaussian dots centred on pixel centres (row i, column j), grey uint8 x 3."""
    height, width = shape
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    image = np.zeros((height, width))
    for i, j in centres_ij:
        image += np.exp(-((yy - i) ** 2 + (xx - j) ** 2) / (2 * sigma**2))
    return np.repeat(np.clip(np.rint(255 * image), 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def _find_dots(image: np.ndarray) -> np.ndarray:
    """Intensity centroids of the dots, in COLMAP pixel coordinates."""
    grey = image[..., 0].astype(np.float64)
    labels, n = ndimage.label(grey > 8)
    ij = np.array(ndimage.center_of_mass(grey, labels, range(1, n + 1)))
    return ij[:, ::-1] + 0.5  # (row, col) of OpenCV centres -> COLMAP (x, y)


def _nearest_errors(found: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Distance from each expected dot to the nearest dot found."""
    return np.linalg.norm(found[:, None] - expected[None], axis=2).min(0)


GRID_IJ = np.array([(i, j) for i in range(24, 160, 34) for j in range(24, 200, 34)])
GRID_XY = GRID_IJ[:, ::-1] + 0.5  # COLMAP coordinates of those pixel centres


def test_explicit_homography_lands_dots_where_warp_points_says():
    """A half-turn with a zoom: a warp off by the half-pixel convention misplaces the dots by over a pixel."""
    image = _dots((184, 224), GRID_IJ)
    width, height = 224, 184
    corners = np.array([[0, 0], [width, 0], [width, height], [0, height]], float)
    # Half-turn about the centre, zoomed out 0.8x with a little perspective: the Jacobian is far from I.
    target = np.array([[0.9 * width, 0.92 * height], [0.12 * width, 0.86 * height],
                       [0.08 * width, 0.1 * height], [0.86 * width, 0.12 * height]])
    H = homography_from_corners(corners, target)
    out = warp_image(image, H)
    expected = warp_points(H, GRID_XY)
    inside = np.all((expected > 8) & (expected < [width - 8, height - 8]), axis=1)
    assert inside.sum() >= 20
    found = _find_dots(out)
    errors = _nearest_errors(found, expected[inside])
    assert errors.max() < 0.25, errors.max()
    # The wrong conventions are detectably wrong on this warp.
    for wrong in (cv_from_colmap(H), colmap_from_cv(H)):
        wrong_errors = _nearest_errors(found, warp_points(wrong, GRID_XY)[inside])
        assert np.median(wrong_errors) > 0.6


def test_conversions_are_inverse_and_match_opencv():
    H = homography_from_corners(np.array([[0, 0], [10, 0], [10, 8], [0, 8]], float),
                                np.array([[1, 0.5], [9, 1], [10.5, 7.5], [0, 9]], float))
    assert np.allclose(colmap_from_cv(cv_from_colmap(H)), H)
    pts_cv = np.array([[0.0, 0.0], [3.0, 4.0], [9.0, 7.0]])
    via_cv = cv2.perspectiveTransform(pts_cv[None].astype(np.float64), cv_from_colmap(H))[0]
    assert np.allclose(warp_points(H, pts_cv + 0.5), via_cv + 0.5)


def test_random_warp_moves_corners_within_bound_and_dots_follow():
    image = _dots((184, 224), GRID_IJ)
    height, width = image.shape[:2]
    corners = np.array([[0, 0], [width, 0], [width, height], [0, height]], float)
    warp = 0.15
    seen_far = False
    for seed in range(3):
        out, H = render_condition(image, ConditionTransform("e", "exposure", strength=0.0, warp=warp), seed)
        moved = np.linalg.norm(warp_points(H, corners) - corners, axis=1)
        assert moved.max() <= warp * np.hypot(width, height) + 1e-9
        seen_far |= moved.max() > 0.3 * warp * np.hypot(width, height)
        expected = warp_points(H, GRID_XY)
        inside = np.all((expected > 8) & (expected < [width - 8, height - 8]), axis=1)
        assert inside.sum() >= 15
        found = _find_dots(out)
        assert _nearest_errors(found, expected[inside]).max() < 0.25
    assert seen_far


def test_warp_points_shapes():
    assert warp_points(np.eye(3), np.zeros((0, 2))).shape == (0, 2)
    assert np.allclose(warp_points(np.diag([2.0, 3.0, 1.0]), np.array([[1.0, 1.0]])), [[2.0, 3.0]])
    with pytest.raises(InputError):
        warp_points(np.eye(3), np.zeros((3, 3)))
    with pytest.raises(InputError):
        warp_points(np.eye(2), np.zeros((3, 2)))


# ---------------------------------------------------------- an augmented observation lands on its source point


def test_reextracted_keypoints_associate_with_their_source(photo):
    """RootSIFT on the photo and on a mildly warped, re-exposed rendering: each rendered keypoint associated (2 px,
    through H) with a source keypoint is, by its descriptor, that keypoint: the same 3D point in a map."""
    from skimage import data

    from fuseloc.data.extractors.sift import Sift

    image = data.astronaut()
    sift = Sift(max_keypoints=2048)
    source = sift(image)
    rendered, H = render_condition(image, ConditionTransform("exposure", "exposure", strength=0.5, warp=0.04), [3])
    assert not np.allclose(H, np.eye(3))
    target = sift(rendered)
    similarity = target.descriptors @ source.descriptors.T
    best_source, best_target = similarity.argmax(1), similarity.argmax(0)
    mutual = best_target[best_source] == np.arange(len(target.keypoints))

    def agreement(homography: np.ndarray) -> tuple[int, float]:
        source_index = associate_by_radius(warp_points(homography, source.keypoints), target.keypoints, 2.0)
        rows = np.flatnonzero(source_index >= 0)
        same = mutual[rows] & (best_source[rows] == source_index[rows])
        return len(rows), float(same.mean()) if len(rows) else 0.0

    associated, right = agreement(H)
    assert associated >= 0.4 * len(target.keypoints)
    assert right > 0.7, right
    # The association is what makes them agree: through the wrong homography almost nothing does.
    for wrong in (np.linalg.inv(H), np.eye(3)):
        _, right_wrong = agreement(wrong)
        assert right_wrong < 0.1
