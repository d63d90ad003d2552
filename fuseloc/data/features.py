"""Feature caches in hloc's h5 layout, and the weight-free default extractors (SIFT, VLAD).

h5 layout (one file per extractor configuration, one group per relative image name, as hloc)::

    <name>/keypoints          (N, 2) float, pixel coords with the top-left pixel centre at (0, 0) (hloc)
    <name>/descriptors        (D, N) float16/float32 (hloc stores D x N)
    <name>/scores             (N,)
    <name>/image_size         (2,) int, (width, height) of the original image
    <name>/global_descriptor  (G,) in global-feature files

In memory, :class:`LocalFeatures` holds keypoints in COLMAP's convention (top-left pixel centre at
(0.5, 0.5)) and descriptors as (N, D): the +0.5 shift happens only here, on read and write.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import h5py
import numpy as np

from fuseloc.errors import InputError
from fuseloc.io import config_hash

logger = logging.getLogger(__name__)

#: hloc pixel convention -> COLMAP pixel convention.
HLOC_TO_COLMAP_SHIFT = 0.5


@dataclass
class LocalFeatures:
    """Local features of one image.

    Attributes:
        keypoints: (N, 2) float32 pixel coordinates, COLMAP convention, in the original image resolution.
        descriptors: (N, D) float32.
        scores: (N,) float32 detection scores.
        image_size: (width, height) of the original image in pixels.
    """

    keypoints: np.ndarray
    descriptors: np.ndarray
    scores: np.ndarray
    image_size: tuple[int, int]


class LocalExtractor:
    """Base class of local feature extractors: RGB uint8 image (H, W, 3) -> :class:`LocalFeatures`."""

    def tag(self) -> str:
        """A short name that encodes the configuration; used in cache file names."""
        raise NotImplementedError

    def config(self) -> dict:
        """The full configuration, stored in the cache and compared on reuse."""
        raise NotImplementedError

    @property
    def dim(self) -> int:
        """Descriptor dimension D."""
        raise NotImplementedError

    def __call__(self, image: np.ndarray) -> LocalFeatures:
        raise NotImplementedError


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as RGB uint8 (H, W, 3), with a clear error for missing or unreadable files."""
    path = Path(path)
    if not path.is_file():
        raise InputError("image not found", path)
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise InputError("cannot decode image (corrupt or unsupported format)", path)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class Sift(LocalExtractor):
    """OpenCV SIFT with optional RootSIFT, a weight-free local feature that runs everywhere.

    Args:
        max_keypoints: keep the strongest keypoints (0 = all).
        resize_max: downscale so the longest side is at most this many pixels (0 = never); keypoints are
            returned in original-resolution pixels.
        root: RootSIFT (L1-normalise, square root); descriptors then have unit L2 norm.
        contrast_threshold: OpenCV's DoG contrast threshold; lower finds more keypoints in dark images.
    """

    def __init__(self, max_keypoints: int = 2048, resize_max: int = 1024, root: bool = True, contrast_threshold: float = 0.02):
        self.max_keypoints = max_keypoints
        self.resize_max = resize_max
        self.root = root
        self.contrast_threshold = contrast_threshold

    def config(self) -> dict:
        return {"name": "sift", "max_keypoints": self.max_keypoints, "resize_max": self.resize_max,
                "root": self.root, "contrast_threshold": self.contrast_threshold}

    def tag(self) -> str:
        return f"{'rootsift' if self.root else 'sift'}-n{self.max_keypoints}-r{self.resize_max}-c{self.contrast_threshold:g}"

    @property
    def dim(self) -> int:
        return 128

    def __call__(self, image: np.ndarray) -> LocalFeatures:
        height, width = image.shape[:2]
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
        scale = 1.0
        if self.resize_max and max(height, width) > self.resize_max:
            scale = self.resize_max / max(height, width)
            gray = cv2.resize(gray, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
        sift = cv2.SIFT_create(nfeatures=self.max_keypoints, contrastThreshold=self.contrast_threshold)
        cv_kps, desc = sift.detectAndCompute(gray, None)
        if desc is None or len(cv_kps) == 0:
            return LocalFeatures(np.zeros((0, 2), np.float32), np.zeros((0, 128), np.float32), np.zeros(0, np.float32), (width, height))
        # OpenCV can return a few more than nfeatures on ties; keep the strongest.
        order = np.argsort([-k.response for k in cv_kps], kind="stable")
        if self.max_keypoints:
            order = order[: self.max_keypoints]
        xy = np.array([cv_kps[i].pt for i in order], np.float32)
        scores = np.array([cv_kps[i].response for i in order], np.float32)
        desc = desc[order].astype(np.float32)
        # OpenCV puts pixel centres at integers; map to original resolution, then to COLMAP's +0.5.
        xy = (xy + 0.5) / scale
        if self.root:
            desc /= np.maximum(desc.sum(axis=1, keepdims=True), 1e-12)
            desc = np.sqrt(desc)
        else:
            desc /= np.maximum(np.linalg.norm(desc, axis=1, keepdims=True), 1e-12)
        return LocalFeatures(xy, desc, scores, (width, height))


# ----------------------------------------------------------------------------------------------- h5 caches


def _check_config(handle: h5py.File, config: dict, path: Path) -> None:
    stored = handle.attrs.get("fuseloc_config")
    if stored is None:
        return  # a file written by hloc or by hand: no configuration to compare
    if json.loads(stored) != json.loads(json.dumps(config)):
        raise InputError(
            f"feature cache was made with another configuration ({stored}); delete it or choose another output name",
            path,
        )


def write_local(handle: h5py.File, name: str, features: LocalFeatures, as_half: bool = False) -> None:
    """Write one image's local features in hloc's layout (replacing an existing group)."""
    if name in handle:
        del handle[name]
    group = handle.create_group(name)
    desc = features.descriptors.T
    group.create_dataset("keypoints", data=(features.keypoints - HLOC_TO_COLMAP_SHIFT).astype(np.float32))
    group.create_dataset("descriptors", data=desc.astype(np.float16 if as_half else np.float32))
    group.create_dataset("scores", data=features.scores.astype(np.float16 if as_half else np.float32))
    group.create_dataset("image_size", data=np.asarray(features.image_size, np.int64))
    group.attrs["complete"] = True  # written last: a group without it is from an interrupted run


def read_local(handle: h5py.File, name: str, path: Path | str = "") -> LocalFeatures:
    if name not in handle:
        raise InputError(f"no local features for image {name!r}", path)
    group = handle[name]
    try:
        keypoints = np.asarray(group["keypoints"], np.float32)[:, :2] + HLOC_TO_COLMAP_SHIFT
        descriptors = np.asarray(group["descriptors"], np.float32).T
        scores = np.asarray(group["scores"], np.float32) if "scores" in group else np.ones(len(keypoints), np.float32)
        size = tuple(int(v) for v in np.asarray(group["image_size"])) if "image_size" in group else (0, 0)
    except KeyError as exc:
        raise InputError(f"image {name!r}: missing dataset {exc}", path) from None
    if len(descriptors) != len(keypoints):
        raise InputError(f"image {name!r}: {len(keypoints)} keypoints but descriptors of shape {descriptors.T.shape}", path)
    if not np.all(np.isfinite(descriptors)):
        raise InputError(f"image {name!r}: descriptors contain NaN or infinite values", path)
    return LocalFeatures(keypoints, descriptors, scores, size)


def _complete_names(handle: h5py.File) -> set[str]:
    names: set[str] = set()

    def visit(name: str, obj: h5py.HLObject) -> None:
        if isinstance(obj, h5py.Group) and ("keypoints" in obj or "global_descriptor" in obj):
            if obj.attrs.get("complete", True):
                names.add(name)

    handle.visititems(visit)
    return names


def _open_for_append(path: Path, config: dict) -> h5py.File:
    """Open (or create) a cache for appending; a file that h5py cannot read (killed mid-write) is rebuilt."""
    if path.exists():
        try:
            handle = h5py.File(path, "a")
        except OSError:
            logger.warning("%s is unreadable (interrupted write?); rebuilding it", path)
            path.unlink()
            handle = h5py.File(path, "a")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = h5py.File(path, "a")
    try:
        _check_config(handle, config, path)
    except InputError:
        handle.close()
        raise
    handle.attrs["fuseloc_config"] = json.dumps(config)
    return handle


def extract_local_features(
    extractor: LocalExtractor,
    image_root: str | Path,
    names: Sequence[str],
    output: str | Path,
    as_half: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Extract local features of ``names`` into ``output`` (skipping images already there). Returns ``output``.

    The file grows image by image; an image's group is marked complete only after all its datasets are
    written, and incomplete groups are redone, so a killed extraction resumes safely.
    """
    from tqdm import tqdm

    output = Path(output)
    if overwrite and output.exists():
        output.unlink()
    handle = _open_for_append(output, extractor.config())
    try:
        done = _complete_names(handle)
        todo = [n for n in names if n not in done]
        if todo:
            logger.info("extracting %s for %d images into %s", extractor.tag(), len(todo), output)
        for name in tqdm(todo, desc=f"local {extractor.tag()}", disable=not progress or not todo, leave=False):
            features = extractor(read_image(Path(image_root) / name))
            write_local(handle, name, features, as_half)
            handle.flush()
    finally:
        handle.close()
    return output


class FeatureCache:
    """Read-only access to a local (and optionally a global) feature file, keeping the handles open."""

    def __init__(self, local_path: str | Path, global_path: str | Path | None = None):
        self.local_path = Path(local_path)
        self.global_path = None if global_path is None else Path(global_path)
        for p in (self.local_path, self.global_path):
            if p is not None and not p.is_file():
                raise InputError("feature file not found", p)
        self._local = h5py.File(self.local_path, "r")
        self._global = None if self.global_path is None else h5py.File(self.global_path, "r")

    def local(self, name: str) -> LocalFeatures:
        return read_local(self._local, name, self.local_path)

    def global_descriptor(self, name: str) -> np.ndarray:
        if self._global is None:
            raise InputError("no global feature file configured")
        return read_global(self._global, name, self.global_path)

    def global_descriptors(self, names: Iterable[str]) -> np.ndarray:
        return np.stack([self.global_descriptor(n) for n in names])

    def close(self) -> None:
        self._local.close()
        if self._global is not None:
            self._global.close()

    def __enter__(self) -> FeatureCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------- global: VLAD


def read_global(handle: h5py.File, name: str, path: Path | str | None = "") -> np.ndarray:
    if name not in handle or "global_descriptor" not in handle[name]:
        raise InputError(f"no global descriptor for image {name!r}", path)
    desc = np.asarray(handle[name]["global_descriptor"], np.float32).reshape(-1)
    if not np.all(np.isfinite(desc)):
        raise InputError(f"image {name!r}: global descriptor contains NaN or infinite values", path)
    return desc


def write_global(handle: h5py.File, name: str, descriptor: np.ndarray, as_half: bool = False) -> None:
    if name in handle:
        del handle[name]
    group = handle.create_group(name)
    group.create_dataset("global_descriptor", data=descriptor.astype(np.float16 if as_half else np.float32))
    group.attrs["complete"] = True


class Vlad:
    """VLAD over local descriptors with a k-means vocabulary trained on the database (needs no weights).

    Intra-normalised per cluster, then power- (signed square root) and L2-normalised.

    Args:
        num_clusters: vocabulary size k; the descriptor has k x D dimensions.
        max_training_descriptors: descriptors sampled from the database to train the vocabulary.
        seed: k-means seed.
    """

    def __init__(self, num_clusters: int = 32, max_training_descriptors: int = 100_000, seed: int = 0):
        self.num_clusters = num_clusters
        self.max_training_descriptors = max_training_descriptors
        self.seed = seed
        self.centroids: np.ndarray | None = None

    def config(self) -> dict:
        return {"name": "vlad", "num_clusters": self.num_clusters, "max_training_descriptors": self.max_training_descriptors,
                "seed": self.seed}

    def tag(self) -> str:
        return f"vlad-k{self.num_clusters}"

    def fit(self, descriptors: np.ndarray) -> Vlad:
        import faiss

        rng = np.random.default_rng(self.seed)
        if len(descriptors) > self.max_training_descriptors:
            descriptors = descriptors[rng.choice(len(descriptors), self.max_training_descriptors, replace=False)]
        if len(descriptors) < self.num_clusters:
            raise InputError(f"VLAD needs at least {self.num_clusters} training descriptors, got {len(descriptors)}")
        kmeans = faiss.Kmeans(descriptors.shape[1], self.num_clusters, niter=25, seed=self.seed, verbose=False)
        kmeans.train(np.ascontiguousarray(descriptors, np.float32))
        self.centroids = kmeans.centroids.copy()
        return self

    def __call__(self, descriptors: np.ndarray) -> np.ndarray:
        """(N, D) local descriptors -> (k*D,) VLAD vector."""
        if self.centroids is None:
            raise RuntimeError("Vlad.fit must run before describing images")
        k, d = self.centroids.shape
        vlad = np.zeros((k, d), np.float32)
        if len(descriptors):
            dist = (descriptors**2).sum(1)[:, None] - 2 * descriptors @ self.centroids.T + (self.centroids**2).sum(1)[None]
            assign = dist.argmin(1)
            np.add.at(vlad, assign, descriptors - self.centroids[assign])
        vlad /= np.maximum(np.linalg.norm(vlad, axis=1, keepdims=True), 1e-12)
        vlad = vlad.reshape(-1)
        vlad = np.sign(vlad) * np.sqrt(np.abs(vlad))
        return vlad / max(float(np.linalg.norm(vlad)), 1e-12)


def extract_vlad(
    vlad: Vlad,
    local_path: str | Path,
    train_names: Sequence[str],
    names: Sequence[str],
    output: str | Path,
    overwrite: bool = False,
) -> Path:
    """Train the VLAD vocabulary on ``train_names`` (database) and describe ``names`` into ``output``."""
    output = Path(output)
    local_path = Path(local_path)
    with h5py.File(local_path, "r") as local:
        train = np.concatenate([read_local(local, n, local_path).descriptors for n in train_names])
        config = {**vlad.config(), "local": json.loads(local.attrs.get("fuseloc_config", "{}")),
                  "train_images": config_hash(sorted(train_names))}
        if overwrite and output.exists():
            output.unlink()
        handle = _open_for_append(output, config)
        try:
            if "vocabulary" in handle:
                vlad.centroids = np.asarray(handle["vocabulary"], np.float32)
            else:
                vlad.fit(train)
                handle.create_dataset("vocabulary_tmp", data=vlad.centroids)
                handle.move("vocabulary_tmp", "vocabulary")
            done = _complete_names(handle)
            for name in names:
                if name not in done:
                    write_global(handle, name, vlad(read_local(local, name, local_path).descriptors))
            handle.flush()
        finally:
            handle.close()
    return output


def cache_dir() -> Path:
    """Where fuseloc keeps caches: ``$FUSELOC_CACHE`` or ``~/.cache/fuseloc``."""
    return Path(os.environ.get("FUSELOC_CACHE", Path.home() / ".cache" / "fuseloc"))
