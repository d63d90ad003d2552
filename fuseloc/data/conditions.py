"""Re-rendering a database image under another condition: generic photometric imitations of night, dusk,
overcast, haze and exposure changes, with an optional mild homography of known parameters.

The models are deliberately generic (no dataset's own renderer): they imitate what a change of light does to a
photograph, so that training sees the same 3D point under several looks. Every random parameter is drawn from
``numpy.random.default_rng(seed)``, so a rendering is a pure function of (image, transform, seed); ``strength``
scales each parameter's departure from "no change", so ``strength=0`` renders the photometry unchanged.

Geometry follows COLMAP: the centre of the top-left pixel is (0.5, 0.5) and the image spans [0, W] x [0, H].
The homography returned by :func:`render_condition` maps source pixel coordinates to output pixel coordinates
in that convention; OpenCV's warps put pixel centres at integers, and :func:`warp_image` converts between them
(``H_colmap = T(+0.5) @ H_cv @ T(-0.5)``).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

import cv2
import numpy as np

from fuseloc.errors import InputError

logger = logging.getLogger(__name__)

ConditionKind = Literal["night", "dusk", "overcast", "haze", "exposure"]
BorderMode = Literal["constant", "replicate", "reflect"]

#: the kinds :func:`render_condition` knows
KINDS: tuple[str, ...] = get_args(ConditionKind)
#: bump when a fixed choice of the renderer changes (a parameter range, the order of draws): part of cache keys
RENDER_VERSION = 1
#: upper bounds of the settings (exclusive for ``warp``)
MAX_WARP = 0.25
MAX_STRENGTH = 3.0
MAX_LIGHT_POOLS = 16
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_BORDERS: dict[str, int] = {
    "constant": cv2.BORDER_CONSTANT,
    "replicate": cv2.BORDER_REPLICATE,
    "reflect": cv2.BORDER_REFLECT_101,
}
#: Rec. 601 luma weights (RGB)
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
#: colour of artificial night light (RGB gains): low-pressure sodium, cold LED, warm LED / halogen
_NIGHT_CASTS = np.array([[1.20, 0.85, 0.45], [0.80, 0.92, 1.15], [1.10, 0.95, 0.75]], np.float32)


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InputError(f"condition {what} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise InputError(f"condition {what} must be finite, got {value}")
    return value


@dataclass(frozen=True)
class ConditionTransform:
    """One re-rendering recipe (jsonargparse-friendly: plain typed fields with defaults).

    Attributes:
        name: label used as the condition name of the samples and in cache paths (letters, digits, ``_.-``).
        kind: the photometric model: ``night`` (gamma darkening, a colour cast of artificial light, pools of
            lamp light, vignetting, blur and a little camera shake, sensor noise growing with brightness),
            ``dusk`` (warm cast, lower exposure, bluish lifted shadows, a glow towards the top), ``overcast``
            (flattened illumination and contrast, lower saturation, cool cast), ``haze`` (blend towards a
            bright airlight, stronger towards the top, i.e. farther), ``exposure`` (gain, gamma and white
            balance jitter).
        strength: scales each random parameter's departure from "no change" (0: photometry unchanged;
            1: the default ranges; at most :data:`MAX_STRENGTH`).
        warp: mild geometric warp: the maximum corner displacement as a fraction of the image diagonal
            (0: none; below :data:`MAX_WARP`).
        noise: scales the sensor noise (night, dusk); 0 for none.
        blur: scales the blur (night: defocus and shake; haze: forward scattering); 0 for none.
        light_pools: night: the largest number of pools of lamp light (each image draws 1..light_pools; 0: none).
        border: how the warp fills pixels that come from outside the source image.
    """

    name: str = "night"
    kind: ConditionKind = "night"
    strength: float = 1.0
    warp: float = 0.0
    noise: float = 1.0
    blur: float = 1.0
    light_pools: int = 3
    border: BorderMode = "constant"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise InputError(f"condition name {self.name!r} must be non-empty letters, digits, '_', '.' or '-' "
                             "(it names cache files)")
        if self.kind not in KINDS:
            raise InputError(f"condition {self.name!r}: unknown kind {self.kind!r} (known: {', '.join(KINDS)})")
        strength = _number(self.strength, f"{self.name!r} strength")
        if not 0.0 <= strength <= MAX_STRENGTH:
            raise InputError(f"condition {self.name!r}: strength must be in [0, {MAX_STRENGTH:g}], got {strength:g}")
        warp = _number(self.warp, f"{self.name!r} warp")
        if not 0.0 <= warp < MAX_WARP:
            raise InputError(f"condition {self.name!r}: warp (max corner displacement / image diagonal) must be in "
                             f"[0, {MAX_WARP:g}), got {warp:g}")
        for field_name in ("noise", "blur"):
            value = _number(getattr(self, field_name), f"{self.name!r} {field_name}")
            if value < 0:
                raise InputError(f"condition {self.name!r}: {field_name} must be >= 0, got {value:g}")
        pools = self.light_pools
        if isinstance(pools, bool) or not isinstance(pools, (int, np.integer)) or not 0 <= pools <= MAX_LIGHT_POOLS:
            raise InputError(f"condition {self.name!r}: light_pools must be an integer in [0, {MAX_LIGHT_POOLS}], "
                             f"got {pools!r}")
        if self.border not in _BORDERS:
            raise InputError(f"condition {self.name!r}: unknown border {self.border!r} (known: {', '.join(_BORDERS)})")

    def config(self) -> dict[str, Any]:
        """Every setting plus :data:`RENDER_VERSION`: what a cache of renderings is computed from."""
        return {**asdict(self), "render_version": RENDER_VERSION}


def default_conditions() -> tuple[ConditionTransform, ...]:
    """Night, dusk, overcast and haze, each once, at the default strength and a mild warp."""
    return (
        ConditionTransform(name="night", kind="night", warp=0.02),
        ConditionTransform(name="dusk", kind="dusk", warp=0.02),
        ConditionTransform(name="overcast", kind="overcast", warp=0.02),
        ConditionTransform(name="haze", kind="haze", warp=0.02),
    )


def check_conditions(transforms: Sequence[ConditionTransform]) -> tuple[ConditionTransform, ...]:
    """The transforms as a tuple; an InputError when two share a name (the name keys samples and caches)."""
    transforms = tuple(transforms)
    for t in transforms:
        if not isinstance(t, ConditionTransform):
            raise InputError(f"expected ConditionTransform entries, got {type(t).__name__}")
    names = [t.name for t in transforms]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InputError(f"condition names must be unique, repeated: {', '.join(repeated)}")
    return transforms


# --------------------------------------------------------------------------------------------------- geometry


def _shift(d: float) -> np.ndarray:
    return np.array([[1.0, 0.0, d], [0.0, 1.0, d], [0.0, 0.0, 1.0]])


def colmap_from_cv(H_cv: np.ndarray) -> np.ndarray:
    """A homography between OpenCV pixel coordinates (centres at integers) in COLMAP's (centres at +0.5)."""
    return _shift(0.5) @ np.asarray(H_cv, np.float64) @ _shift(-0.5)


def cv_from_colmap(H: np.ndarray) -> np.ndarray:
    """A homography between COLMAP pixel coordinates in OpenCV's (the inverse of :func:`colmap_from_cv`)."""
    return _shift(-0.5) @ np.asarray(H, np.float64) @ _shift(0.5)


def _check_homography(H: np.ndarray) -> np.ndarray:
    H = np.asarray(H, np.float64)
    if H.shape != (3, 3) or not np.all(np.isfinite(H)):
        raise InputError(f"a homography must be a finite 3x3 matrix, got shape {H.shape}")
    return H


def warp_points(H: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """(N, 2) points mapped by the homography ``H`` (both in the same pixel convention); float64. A point sent
    to infinity (on the homography's vanishing line) comes back non-finite."""
    H = _check_homography(H)
    xy = np.asarray(xy, np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise InputError(f"points must be an (N, 2) array, got shape {xy.shape}")
    p = xy @ H[:, :2].T + H[:, 2]
    w = p[:, 2:]
    with np.errstate(divide="ignore", invalid="ignore"):
        out = p[:, :2] / w
    out[np.abs(w[:, 0]) < 1e-12] = np.inf
    return out


def homography_from_corners(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The homography mapping 4 points ``src`` onto ``dst`` ((4, 2) each), float64, normalised to H[2, 2] = 1."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    A = np.zeros((8, 8))
    b = np.zeros(8)
    for i, ((x, y), (u, v)) in enumerate(zip(src, dst)):
        A[2 * i] = [x, y, 1, 0, 0, 0, -u * x, -u * y]
        A[2 * i + 1] = [0, 0, 0, x, y, 1, -v * x, -v * y]
        b[2 * i], b[2 * i + 1] = u, v
    h = np.linalg.solve(A, b)
    return np.append(h, 1.0).reshape(3, 3)


def _convex_same_orientation(src: np.ndarray, dst: np.ndarray) -> bool:
    """Whether the quadrilateral ``dst`` is strictly convex with the winding of ``src`` (a homography between
    them then keeps the whole image on one side of its vanishing line, unfolded)."""
    def turns(q: np.ndarray) -> np.ndarray:
        e = np.roll(q, -1, axis=0) - q
        return e[:, 0] * np.roll(e, -1, axis=0)[:, 1] - e[:, 1] * np.roll(e, -1, axis=0)[:, 0]

    ref = np.sign(turns(src))
    return bool(np.all(turns(dst) * ref > 0))


def random_homography(width: int, height: int, warp: float, rng: np.random.Generator) -> np.ndarray:
    """A homography (COLMAP convention) moving each image corner by at most ``warp`` x the image diagonal, in a
    uniformly random direction; identity for ``warp == 0``. Folded quadrilaterals are redrawn (then shrunk)."""
    if warp <= 0:
        return np.eye(3)
    corners = np.array([[0.0, 0.0], [width, 0.0], [width, height], [0.0, height]])
    reach = warp * math.hypot(width, height)
    for attempt in range(64):
        radius = reach * np.sqrt(rng.uniform(0.0, 1.0, 4)) * 0.5 ** max(0, attempt - 16)
        angle = rng.uniform(0.0, 2.0 * math.pi, 4)
        dst = corners + radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], 1)
        if _convex_same_orientation(corners, dst):
            return homography_from_corners(corners, dst)
    logger.warning("no unfolded warp of a %dx%d image within %.3g of its diagonal: using none", width, height, warp)
    return np.eye(3)


def warp_image(image: np.ndarray, H: np.ndarray, border: BorderMode = "constant") -> np.ndarray:
    """``image`` resampled (bilinear) so that source pixel ``p`` lands at ``H p`` (COLMAP convention), at the same
    size and dtype; pixels from outside the source follow ``border`` (``constant``: black)."""
    H = _check_homography(H)
    if np.allclose(H, np.eye(3), rtol=0.0, atol=1e-15):
        return image.copy()
    height, width = image.shape[:2]
    return cv2.warpPerspective(image, cv_from_colmap(H), (width, height), flags=cv2.INTER_LINEAR,
                               borderMode=_BORDERS[border], borderValue=0)


# ------------------------------------------------------------------------------------------------- photometry


def _towards(identity: float, value: float, strength: float) -> float:
    """``value`` moved towards ``identity`` as ``strength`` falls from 1 to 0 (and beyond ``value`` above 1)."""
    return identity + strength * (value - identity)


def _luma(x: np.ndarray) -> np.ndarray:
    return x @ _LUMA


def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates normalised to [0, 1] (x by width, y by height), float32, broadcastable."""
    yy = ((np.arange(height, dtype=np.float32) + 0.5) / height)[:, None]
    xx = ((np.arange(width, dtype=np.float32) + 0.5) / width)[None, :]
    return yy, xx


def _vignetting(height: int, width: int, amount: float) -> np.ndarray:
    """1 at the centre falling to ``1 - amount`` in the corners (quadratic in the radius)."""
    yy, xx = _grid(height, width)
    r2 = ((xx - 0.5) ** 2 * width**2 + (yy - 0.5) ** 2 * height**2) / np.float32(0.25 * (width**2 + height**2))
    return (1.0 - np.float32(amount) * r2).astype(np.float32)


def _light_pools(height: int, width: int, count: int, amplitude: float, rng: np.random.Generator) -> np.ndarray:
    """Sum of ``count`` Gaussian pools of light, each of peak ``amplitude`` x U(0.5, 1)."""
    yy, xx = _grid(height, width)
    diag = math.hypot(width, height)
    out = np.zeros((height, width), np.float32)
    for _ in range(count):
        cx, cy = rng.uniform(0.0, 1.0), rng.uniform(0.0, 1.0)
        sigma = rng.uniform(0.06, 0.25) * diag
        peak = amplitude * rng.uniform(0.5, 1.0)
        dx2 = ((xx - cx) * width) ** 2
        dy2 = ((yy - cy) * height) ** 2
        out += np.float32(peak) * np.exp(-(dx2 + dy2) / np.float32(2.0 * sigma**2))
    return out


def _motion_blur_kernel(length: float, angle: float) -> np.ndarray:
    """A linear motion-blur kernel: a one-pixel-thick box of ``length`` px (fractional ends) rotated by ``angle``
    rad about the kernel centre, normalised to sum 1."""
    size = 2 * int(math.ceil(length / 2.0)) + 3
    centre = size // 2
    box = np.zeros((size, size), np.float32)
    half = length / 2.0
    for i in range(size):
        lo, hi = i - centre - 0.5, i - centre + 0.5  # the span of kernel column i around the centre
        box[centre, i] = max(0.0, min(hi, half) - max(lo, -half))
    rotation = cv2.getRotationMatrix2D((float(centre), float(centre)), math.degrees(angle), 1.0)
    kernel = cv2.warpAffine(box, rotation, (size, size), flags=cv2.INTER_LINEAR)
    total = float(kernel.sum())
    if total <= 0:
        kernel = np.zeros((size, size), np.float32)
        kernel[centre, centre] = 1.0
        return kernel
    return kernel / np.float32(total)


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    if sigma < 0.05:
        return x
    return cv2.GaussianBlur(x, (0, 0), sigma, borderType=cv2.BORDER_REFLECT_101)


def _sensor_noise(x: np.ndarray, read: float, shot: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise of variance ``read**2 + shot * x`` per channel: read noise plus shot noise that grows with
    brightness."""
    if read <= 0 and shot <= 0:
        return x
    std = np.sqrt(np.float32(read**2) + np.float32(shot) * np.maximum(x, 0.0))
    return x + rng.standard_normal(x.shape, dtype=np.float32) * std


def _night(x: np.ndarray, t: ConditionTransform, rng: np.random.Generator) -> np.ndarray:
    s = t.strength
    height, width = x.shape[:2]
    gamma = _towards(1.0, rng.uniform(1.5, 2.2), s)
    gain = max(_towards(1.0, rng.uniform(0.5, 0.8), s), 0.02)
    cast = _NIGHT_CASTS[rng.integers(len(_NIGHT_CASTS))] * np.exp(rng.normal(0.0, 0.05, 3)).astype(np.float32)
    cast = np.maximum(1.0 + np.float32(s) * (cast - 1.0), 0.02).astype(np.float32)
    ambient = max(_towards(1.0, rng.uniform(0.3, 0.55), s), 0.02)
    pools = int(rng.integers(1, t.light_pools + 1)) if t.light_pools > 0 else 0
    light = np.float32(ambient) + _light_pools(height, width, pools, s * rng.uniform(0.5, 1.2), rng)
    light *= _vignetting(height, width, min(s * rng.uniform(0.2, 0.45), 0.9))
    x = np.power(x, np.float32(gamma)) * (np.float32(gain) * cast) * light[..., None]
    x = _blur(x, t.blur * s * rng.uniform(0.3, 1.0))
    shake = t.blur * s * rng.uniform(0.0, 3.0)
    angle = rng.uniform(0.0, math.pi)
    if shake >= 0.5:
        x = cv2.filter2D(x, -1, _motion_blur_kernel(shake, angle), borderType=cv2.BORDER_REFLECT_101)
    read = t.noise * s * rng.uniform(0.004, 0.012)
    shot = t.noise * s * rng.uniform(0.0005, 0.0015)
    return _sensor_noise(x, read, shot, rng)


def _dusk(x: np.ndarray, t: ConditionTransform, rng: np.random.Generator) -> np.ndarray:
    s = t.strength
    height, width = x.shape[:2]
    gain = max(_towards(1.0, rng.uniform(0.45, 0.7), s), 0.02)
    gamma = _towards(1.0, rng.uniform(1.05, 1.25), s)
    warm = np.array([1.0 + rng.uniform(0.08, 0.2), 1.0 + rng.uniform(-0.02, 0.04), 1.0 - rng.uniform(0.12, 0.28)],
                    np.float32)
    warm = np.maximum(1.0 + np.float32(s) * (warm - 1.0), 0.02).astype(np.float32)
    yy, _ = _grid(height, width)
    glow = 1.0 + np.float32(s * rng.uniform(0.0, 0.1)) * (1.0 - yy)  # brighter sky towards the top
    x = np.power(x, np.float32(gamma)) * (np.float32(gain) * warm) * glow[..., None]
    # Shadows lifted by the blue skylight: a bluish floor under the warm direct light.
    lift = min(s * rng.uniform(0.03, 0.08), 0.5)
    skylight = np.array([0.85, 0.92, 1.1], np.float32) * np.float32(lift)
    x = skylight + np.float32(1.0 - lift) * x
    return _sensor_noise(x, t.noise * s * rng.uniform(0.002, 0.006), t.noise * s * rng.uniform(0.0001, 0.0005), rng)


def _overcast(x: np.ndarray, t: ConditionTransform, rng: np.random.Generator) -> np.ndarray:
    s = t.strength
    height, width = x.shape[:2]
    # Soft diffuse light: flatten the large-scale illumination (sun and shadow areas), keep the local texture.
    flatten = min(s * rng.uniform(0.2, 0.45), 0.95)
    if flatten > 0:
        scale = min(1.0, 128.0 / max(height, width))
        small = cv2.resize(_luma(x), (max(1, round(width * scale)), max(1, round(height * scale))),
                           interpolation=cv2.INTER_AREA)
        small = _blur(small, max(1.0, math.hypot(*small.shape) / 40.0))
        illumination = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
        ratio = (np.float32(illumination.mean()) + 0.02) / (illumination + np.float32(0.02))
        x = x * np.clip(np.power(ratio, np.float32(flatten)), 0.5, 3.0)[..., None]
    contrast = np.float32(max(_towards(1.0, rng.uniform(0.55, 0.75), s), 0.0))
    mean = np.float32(_luma(x).mean())
    x = mean + contrast * (x - mean)
    saturation = np.float32(max(_towards(1.0, rng.uniform(0.35, 0.6), s), 0.0))
    y = _luma(x)[..., None]
    x = y + saturation * (x - y)
    cool = np.array([1.0 - rng.uniform(0.03, 0.08), 1.0, 1.0 + rng.uniform(0.03, 0.1)], np.float32)
    cool = np.maximum(1.0 + np.float32(s) * (cool - 1.0), 0.02).astype(np.float32)
    gain = np.float32(max(_towards(1.0, rng.uniform(0.85, 1.05), s), 0.02))
    return x * (gain * cool)


def _haze(x: np.ndarray, t: ConditionTransform, rng: np.random.Generator) -> np.ndarray:
    s = t.strength
    height, width = x.shape[:2]
    brightness = rng.uniform(0.75, 0.95)
    tint = np.array([1.0 - rng.uniform(0.0, 0.05), 1.0, 1.0 + rng.uniform(0.0, 0.05)])
    airlight = np.minimum(brightness * tint, 1.0).astype(np.float32)
    # Depth proxy: 0 at the bottom, 1 at the top (the sky and far facades), tilted a little sideways.
    yy, xx = _grid(height, width)
    depth = np.clip((1.0 - yy) + np.float32(rng.uniform(-0.2, 0.2)) * (xx - 0.5), 0.0, 1.0)
    beta = s * rng.uniform(0.8, 1.6)
    power = rng.uniform(0.8, 1.5)
    transmission = np.exp(-np.float32(beta) * (0.25 + 0.75 * np.power(depth, np.float32(power))))
    transmission = transmission.astype(np.float32)[..., None]
    x = x * transmission + airlight * (1.0 - transmission)
    return _blur(x, t.blur * s * rng.uniform(0.0, 0.6))


def _exposure(x: np.ndarray, t: ConditionTransform, rng: np.random.Generator) -> np.ndarray:
    s = t.strength
    gain = math.exp(s * rng.uniform(-0.5, 0.5))
    gamma = math.exp(s * rng.uniform(-0.3, 0.3))
    balance = np.exp(s * rng.uniform(-0.12, 0.12, 3))
    balance[1] = 1.0  # white balance moves red and blue against green
    if s == 0:
        return x
    return np.power(x, np.float32(gamma)) * (np.float32(gain) * balance.astype(np.float32))


_MODELS = {"night": _night, "dusk": _dusk, "overcast": _overcast, "haze": _haze, "exposure": _exposure}


def _check_seed(seed: int | Sequence[int]) -> list[int]:
    if isinstance(seed, np.ndarray):
        seed = seed.tolist()
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        values = [int(seed)]
    elif isinstance(seed, Sequence) and not isinstance(seed, (str, bytes)) and len(seed) > 0 and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in seed):
        values = [int(v) for v in seed]
    else:
        raise InputError(f"a rendering seed must be a non-negative integer or a non-empty sequence of them, got {seed!r}")
    if any(v < 0 for v in values):
        raise InputError(f"a rendering seed must be non-negative, got {seed!r}")
    return values


def render_condition(image: np.ndarray, transform: ConditionTransform, seed: int | Sequence[int]
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Render ``image`` under ``transform``'s condition.

    Args:
        image: H x W x 3 uint8 RGB, as :func:`fuseloc.data.extract.read_image` returns (H x W grey works too).
        transform: the recipe.
        seed: an integer or a sequence of integers (e.g. ``[run_seed, image_index, condition_index]``); the
            same seed gives the same bytes. Two transforms of the same kind and seed draw the same parameters,
            so callers give each transform its own seed component.

    Returns:
        The new image (same shape and dtype) and H, the 3 x 3 float64 homography mapping source pixel
        coordinates to output pixel coordinates in COLMAP's convention (pixel centres at +0.5); the identity
        when ``transform.warp == 0``. The warp is drawn from its own random stream, so it does not depend on the
        kind or strength. The image is warped first, then re-lit: vignetting, noise and haze belong to the
        output frame.
    """
    if not isinstance(transform, ConditionTransform):
        raise InputError(f"expected a ConditionTransform, got {type(transform).__name__}")
    image = np.asarray(image)
    if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise InputError(f"render_condition takes an H x W x 3 (or H x W) uint8 image, got {image.dtype} "
                         f"of shape {image.shape}")
    height, width = image.shape[:2]
    if height == 0 or width == 0:
        raise InputError(f"render_condition got an empty image of shape {image.shape}")
    warp_rng, photo_rng = np.random.default_rng(_check_seed(seed)).spawn(2)
    H = random_homography(width, height, transform.warp, warp_rng)
    warped = warp_image(image, H, transform.border)
    rgb = warped if warped.ndim == 3 else np.repeat(warped[..., None], 3, axis=2)
    x = rgb.astype(np.float32) * np.float32(1.0 / 255.0)
    x = _MODELS[transform.kind](x, transform, photo_rng)
    out = np.clip(np.rint(x * np.float32(255.0)), 0, 255).astype(np.uint8)
    if image.ndim == 2:
        out = cv2.cvtColor(out, cv2.COLOR_RGB2GRAY)
    return np.ascontiguousarray(out), H
