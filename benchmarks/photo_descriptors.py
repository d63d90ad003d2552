"""Realistic fused descriptor maps for the index benchmarks: real RootSIFT from real photos, fused as fuseloc fuses.

Used by ``bench_memory.py`` and ``bench_index_scale.py --data photos``. Synthetic clusters of Gaussian noise in
128-512 dimensions have no neighbourhood structure an inverted file can exploit (IVF-Flat agreed on 0.68-0.70 of
the keypoints there, whatever the codec); real descriptors do. This module builds a map of any size from real
photos, without a download and without networks:

- **Photos.** By default the photos shipped with scikit-image and scikit-learn (astronaut, brick, camera, cat,
  coffee, coins, grass, gravel, immunohistochemistry, logo, moon, motorcycle stereo pair, page, text, Hubble deep
  field, retina, rocket, china, flower: 21 photos of 0.1-2 Mpx; the ones with fewer than ~500 SIFT keypoints are
  left out), or every photo under ``images`` (e.g. ``../shared/data/strecha``, downscaled to 1024 px). Every
  fifth photo is held out of the map: its keypoints are the queries' distractors.
- **Map.** "Database images" are random views of the map photos (a homography: zoom 0.6-2, rotation up to 30°,
  squash, perspective; then gamma, contrast, blur and sensor noise), ``keypoints_per_view`` strongest RootSIFT
  keypoints each (OpenCV SIFT), cycled over the photos until the map has ``num_points`` points. One map point is
  one keypoint of one view: the surfaces of a photo recur in many views, each time with a new descriptor (a real
  re-observation, not synthetic noise), so near-identical map points are common, as on repeated facades; an index
  that returns another view's copy of the exact neighbour counts as disagreeing.
- **Fusion.** Each view's global descriptor is fuseloc's VLAD (32 words, trained on the map's RootSIFT) of its
  keypoints; a :class:`~fuseloc.models.fusion.FixedFusion` (PCA reduction fitted on the views' VLADs, reduced
  part L2-normalised, λ = ``lam``, 0.5 by default as evaluate.py's fused method) fuses every keypoint with its
  view's global descriptor: ``λ·local + (1-λ)·R(global)``.
- **Queries.** Each query image is a new random view of a map photo (keypoints that see map surfaces again) plus
  a view of a held-out photo (distractors with no true point), about half and half, fused with the query's own
  VLAD (evaluate.py's ``query_global: light``).
- **Dimension.** 128-D is RootSIFT itself. Wider maps (D = 512 for D2-Net's size) embed RootSIFT with a fixed
  random orthonormal 128 -> D map plus isotropic noise of norm ``embed_noise`` (relative to the unit descriptor,
  independent per keypoint), as ``bench_index_scale.py`` does; the global part is reduced to D by the PCA.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: scikit-image's bundled photos with enough SIFT keypoints (>= ~500 at native size); files read directly, so
#: nothing is fetched. scikit-learn's two sample photos are added by :func:`shipped_photos`.
SKIMAGE_PHOTOS = ("astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "coffee.png", "coins.png",
                  "grass.png", "gravel.png", "ihc.png", "logo.png", "moon.png", "motorcycle_left.png",
                  "motorcycle_right.png", "page.png", "text.png", "hubble_deep_field.jpg", "retina.jpg", "rocket.jpg")
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")
NATIVE_DIM = 128
GLOBAL_CLUSTERS = 32  # VLAD words: 32 x 128 = 4096-D, fuseloc's default global descriptor
MAP_VIEW_SIZE = (640, 480)
QUERY_VIEW_SIZE = (1024, 768)
HOLD_OUT_EVERY = 5


@dataclass(frozen=True)
class Photo:
    name: str
    gray: np.ndarray  # uint8


@dataclass
class PhotoViews:
    """Real RootSIFT of random views: the map's views and the query images, before fusion.

    Attributes:
        map_local: (P, 128) float16 RootSIFT of the map points.
        map_view: (P,) int32 view (database image) of each map point.
        view_photo: (V,) int32 photo of each view.
        query_local: per query image, (K, 128) float32 RootSIFT.
        query_true: per query image, (K,) bool: the keypoint comes from a map photo (sees mapped surfaces).
        photos: names of the photos; held_out: the ones kept out of the map.
    """

    map_local: np.ndarray
    map_view: np.ndarray
    view_photo: np.ndarray
    query_local: list[np.ndarray]
    query_true: list[np.ndarray]
    photos: list[str]
    held_out: list[str]


def shipped_photos() -> list[Photo]:
    """The photos bundled with scikit-image and scikit-learn, grey (no download)."""
    import cv2
    import skimage.data
    import sklearn.datasets

    files = [Path(skimage.data.__file__).parent / name for name in SKIMAGE_PHOTOS]
    files += [Path(sklearn.datasets.__file__).parent / "images" / name for name in SKLEARN_PHOTOS]
    photos = []
    for path in files:
        gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if gray is not None:
            photos.append(Photo(path.stem, gray))
    if len(photos) < 2:
        raise FileNotFoundError("scikit-image / scikit-learn sample photos not found")
    return photos


def folder_photos(root: Path, max_side: int = 1024) -> list[Photo]:
    """Every .jpg/.png under ``root`` (sorted), grey, downscaled to ``max_side``."""
    import cv2

    files = sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    photos = []
    for path in files:
        gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if gray is None:
            continue
        scale = max_side / max(gray.shape)
        if scale < 1:
            gray = cv2.resize(gray, (round(gray.shape[1] * scale), round(gray.shape[0] * scale)), interpolation=cv2.INTER_AREA)
        photos.append(Photo(str(path.relative_to(root)), gray))
    if len(photos) < 2:
        raise FileNotFoundError(f"need at least 2 photos under {root}, found {len(photos)}")
    return photos


def load_photos(images: Path | None) -> list[Photo]:
    """``images``' photos when given, else the shipped ones."""
    return shipped_photos() if images is None else folder_photos(images)


def random_view(gray: np.ndarray, rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """The photo seen from a random viewpoint, in other light: a homography into a ``size`` canvas (zoom 0.6-2 of
    the photo's fit, rotation up to 30°, squash, perspective, random framing), gamma, contrast, blur, noise."""
    import cv2

    h, w = gray.shape
    width, height = size
    fit = min(width / w, height / h)
    zoom = fit * rng.uniform(0.6, 2.0)
    angle = np.deg2rad(rng.uniform(-30, 30))
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    linear = zoom * rotation @ np.diag([1.0, rng.uniform(0.7, 1.0)])
    # a random photo point lands at a random canvas point: zoomed-in views frame different parts
    source = np.array([rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h])
    target = np.array([rng.uniform(0.35, 0.65) * width, rng.uniform(0.35, 0.65) * height])
    homography = np.eye(3)
    homography[:2, :2] = linear
    homography[:2, 2] = target - linear @ source
    homography[2, :2] = rng.uniform(-3e-4, 3e-4, 2) * 512 / max(h, w)
    view = cv2.warpPerspective(gray, homography, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    view = view.astype(np.float32) / 255.0
    view = rng.uniform(0.6, 1.1) * view ** rng.uniform(0.6, 1.6) + rng.uniform(0.0, 0.1)
    sigma = rng.uniform(0.0, 1.2)
    if sigma > 0.3:
        view = cv2.GaussianBlur(view, (0, 0), sigma)
    view = view * 255.0 + rng.normal(0.0, rng.uniform(0.0, 3.0), view.shape).astype(np.float32)
    return np.clip(view, 0, 255).astype(np.uint8)


def rootsift(sift, gray: np.ndarray) -> np.ndarray:  # noqa: ANN001 (cv2.SIFT)
    """(N, 128) RootSIFT of the strongest keypoints (the detector's ``nfeatures``), unit L2 norm, float32."""
    _, desc = sift.detectAndCompute(gray, None)
    if desc is None:
        return np.zeros((0, NATIVE_DIM), np.float32)
    desc = desc / np.maximum(desc.sum(1, keepdims=True), 1e-9)
    return np.sqrt(desc).astype(np.float32)


def extract_views(photos: list[Photo], num_points: int, num_queries: int, query_keypoints: int,
                  keypoints_per_view: int = 800, seed: int = 0, log=print) -> PhotoViews:  # noqa: ANN001
    """Views of ``photos`` until the map has ``num_points`` points, and ``num_queries`` query images of about
    ``query_keypoints`` keypoints each (see the module docstring)."""
    import cv2

    rng = np.random.default_rng(seed)
    held = [i for i in range(len(photos)) if i % HOLD_OUT_EVERY == HOLD_OUT_EVERY - 1] or [len(photos) - 1]
    in_map = [i for i in range(len(photos)) if i not in held]
    sift = cv2.SIFT_create(nfeatures=keypoints_per_view, contrastThreshold=0.02)
    map_local = np.empty((num_points, NATIVE_DIM), np.float16)
    map_view = np.empty(num_points, np.int32)
    view_photo: list[int] = []
    filled, t0, last = 0, time.perf_counter(), 0.0
    while filled < num_points:
        photo = in_map[len(view_photo) % len(in_map)]
        desc = rootsift(sift, random_view(photos[photo].gray, rng, MAP_VIEW_SIZE))[: num_points - filled]
        map_local[filled : filled + len(desc)] = desc
        map_view[filled : filled + len(desc)] = len(view_photo)
        view_photo.append(photo)
        filled += len(desc)
        if filled == 0 and len(view_photo) >= 3 * len(in_map):
            raise ValueError("the photos give no SIFT keypoints (blank or featureless?)")
        if time.perf_counter() - last > 30:
            last = time.perf_counter()
            log(f"  {filled} of {num_points} map points from {len(view_photo)} views ({last - t0:.0f} s)")
    query_sift = cv2.SIFT_create(nfeatures=query_keypoints // 2, contrastThreshold=0.02)
    query_local, query_true = [], []
    for q in range(num_queries):
        seen = rootsift(query_sift, random_view(photos[in_map[rng.integers(len(in_map))]].gray, rng, QUERY_VIEW_SIZE))
        other = rootsift(query_sift, random_view(photos[held[q % len(held)]].gray, rng, QUERY_VIEW_SIZE))
        query_local.append(np.vstack([seen, other]))
        query_true.append(np.r_[np.ones(len(seen), bool), np.zeros(len(other), bool)])
    log(f"  map: {num_points} points from {len(view_photo)} views of {len(in_map)} photos; queries: {num_queries} "
        f"images, {sum(len(q) for q in query_local)} keypoints; held out: {', '.join(photos[i].name for i in held)} "
        f"({time.perf_counter() - t0:.0f} s)")
    return PhotoViews(map_local, map_view, np.asarray(view_photo, np.int32), query_local, query_true,
                      [p.name for p in photos], [photos[i].name for i in held])


def embedding(dim: int) -> np.ndarray:
    """A fixed random (128, dim) map: orthonormal rows for dim >= 128 (distances between embedded vectors are
    kept; the same map as ``bench_index_scale.embed``), orthonormal columns (a projection) below."""
    rng = np.random.default_rng(12345)
    if dim >= NATIVE_DIM:
        basis, _ = np.linalg.qr(rng.standard_normal((dim, NATIVE_DIM)))
        return np.ascontiguousarray(basis.T, np.float32)
    basis, _ = np.linalg.qr(rng.standard_normal((NATIVE_DIM, dim)))
    return np.ascontiguousarray(basis, np.float32)


def widen(local: np.ndarray, dim: int, noise: float, rng: np.random.Generator) -> np.ndarray:
    """(N, dim) unit-norm float32 local descriptors from RootSIFT: as they are at 128-D; through
    :func:`embedding` plus isotropic noise of norm ``noise`` above (D2-Net's 512-D); projected below (toy sizes)."""
    local = np.asarray(local, np.float32)
    if dim == NATIVE_DIM:
        return local
    wide = local @ embedding(dim)
    if dim > NATIVE_DIM:
        wide += noise / math.sqrt(dim) * rng.standard_normal(wide.shape, dtype=np.float32)
    return wide / np.maximum(np.linalg.norm(wide, axis=1, keepdims=True), 1e-12)


@dataclass
class FusedPhotoData:
    """A fused map and query images from :class:`PhotoViews` (float32 queries; the map as ``map_dtype``)."""

    map_descriptors: np.ndarray
    queries: list[np.ndarray]
    query_true: list[np.ndarray]
    fusion: object  # the fitted FixedFusion


def fuse_views(views: PhotoViews, dim: int, lam: float = 0.5, embed_noise: float = 0.3, seed: int = 0,
               map_dtype: type = np.float16, chunk: int = 200_000) -> FusedPhotoData:
    """Fuse every map point with its view's VLAD, and every query keypoint with its image's (module docstring)."""
    import torch

    from fuseloc.data.extractors.vlad import Vlad
    from fuseloc.models.fusion import FixedFusion

    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(len(views.map_local), min(100_000, len(views.map_local)), replace=False))
    vlad = Vlad(GLOBAL_CLUSTERS, seed=seed).fit(np.asarray(views.map_local[sample], np.float32))
    bounds = np.flatnonzero(np.r_[True, views.map_view[1:] != views.map_view[:-1], True])
    view_global = np.zeros((len(views.view_photo), GLOBAL_CLUSTERS * NATIVE_DIM), np.float32)
    for a, b in zip(bounds[:-1], bounds[1:]):
        view_global[views.map_view[a]] = vlad(np.asarray(views.map_local[a:b], np.float32))
    fusion = FixedFusion(dim, view_global.shape[1], lam=lam, reduction="pca")
    fusion.fit(view_global[np.unique(views.map_view)])  # views without keypoints have no global descriptor
    with torch.no_grad():
        reduced = fusion.reduce_global(torch.from_numpy(view_global))
        out = np.empty((len(views.map_local), dim), map_dtype)
        for s in range(0, len(out), chunk):
            local = torch.from_numpy(widen(views.map_local[s : s + chunk], dim, embed_noise, rng))
            rows = torch.from_numpy(views.map_view[s : s + len(local)].astype(np.int64))
            out[s : s + len(local)] = fusion.fuse(local, reduced[rows]).numpy()
        queries = []
        for local in views.query_local:
            reduced_q = fusion.reduce_global(torch.from_numpy(vlad(local)[None]))
            queries.append(np.ascontiguousarray(fusion.fuse(torch.from_numpy(widen(local, dim, embed_noise, rng)), reduced_q).numpy(), np.float32))
    return FusedPhotoData(out, queries, views.query_true, fusion)
