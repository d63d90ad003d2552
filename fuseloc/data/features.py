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

import contextlib
import json
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
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

    #: images handed to :meth:`extract_batch` at once; networks override it (one forward pass per batch).
    batch_size: int = 1

    def __call__(self, image: np.ndarray) -> LocalFeatures:
        raise NotImplementedError

    def extract_batch(self, images: Sequence[np.ndarray]) -> list[LocalFeatures]:
        """Features of several RGB uint8 images; the default runs them one by one."""
        return [self(image) for image in images]


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
            f"feature cache was made with another configuration ({stored}, now {json.dumps(config)}); "
            "delete it or rebuild it with overwrite (evaluate.py --overwrite true)",
            path,
        )


def image_stamp(path: str | Path) -> str:
    """Identity of an image file's content as far as caches are concerned: size and modification time."""
    st = Path(path).stat()
    return f"{st.st_size}-{st.st_mtime_ns}"


def _fresh_names(handle: h5py.File, names: Sequence[str], stamps: dict[str, str]) -> set[str]:
    """Complete groups whose recorded source stamp matches (groups without one, e.g. hloc's, are trusted)."""
    complete = _complete_names(handle)
    fresh = set()
    for name in names:
        if name in complete:
            recorded = handle[name].attrs.get("source")
            if recorded is None or name not in stamps or recorded == stamps[name]:
                fresh.add(name)
    return fresh


def write_local(handle: h5py.File, name: str, features: LocalFeatures, as_half: bool = False,
                source_stamp: str | None = None) -> None:
    """Write one image's local features in hloc's layout (replacing an existing group).

    ``source_stamp`` (see :func:`image_stamp`) lets a later run notice that the image changed on disk.
    """
    if name in handle:
        del handle[name]
    group = handle.create_group(name)
    desc = features.descriptors.T
    group.create_dataset("keypoints", data=(features.keypoints - HLOC_TO_COLMAP_SHIFT).astype(np.float32))
    group.create_dataset("descriptors", data=desc.astype(np.float16 if as_half else np.float32))
    group.create_dataset("scores", data=features.scores.astype(np.float16 if as_half else np.float32))
    group.create_dataset("image_size", data=np.asarray(features.image_size, np.int64))
    if source_stamp is not None:
        group.attrs["source"] = source_stamp
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
        raise InputError(f"image {name!r}: {len(keypoints)} keypoints but descriptors stored as {descriptors.T.shape}, "
                         f"expected D x {len(keypoints)} (hloc's layout: one column per keypoint)", path)
    if not np.all(np.isfinite(descriptors)):
        raise InputError(f"image {name!r}: descriptors contain NaN or infinite values", path)
    return LocalFeatures(keypoints, descriptors, scores, size)


def _feature_groups(handle: h5py.File, keys: tuple[str, ...] = ("keypoints", "global_descriptor")) -> list[str]:
    """Paths of the groups holding an image's features (any of ``keys``), at any depth (hloc nests by folder)."""
    groups: list[str] = []
    handle.visititems(lambda name, obj: groups.append(name) if isinstance(obj, h5py.Group)
                      and any(key in obj for key in keys) else None)
    return groups


def _complete_names(handle: h5py.File) -> set[str]:
    # hloc's files carry no completion mark, ours always do: only there may a missing mark mean "interrupted".
    default = "fuseloc_config" not in handle.attrs
    return {name for name in _feature_groups(handle) if handle[name].attrs.get("complete", default)}


#: Root attribute set while a process appends to a cache and removed when it finishes cleanly: a file that
#: still carries it was interrupted (killed, or stopped by an error) and is checked before anything in it is used.
WRITING_ATTR = "fuseloc_writing"

#: Lowest HDF5 format our caches are written in. 1.8 has the dense attribute storage that fitted states (VLAD
#: vocabularies over 64 kB) need; newer bounds ("latest") give a v3 superblock whose consistency flags a killed
#: writer leaves set, after which HDF5 refuses to open the file at all, so a kill would lose the whole cache.
_LIBVER = ("v108", "latest")


def _repair(handle: h5py.File, path: Path) -> int:
    """Drop the groups an interrupted writer left unmarked or unreadable; returns how many survived."""
    t0 = time.perf_counter()
    groups = _feature_groups(handle)
    dropped = 0
    marked = "fuseloc_config" in handle.attrs  # else a foreign (hloc) file we appended to: its groups have no marks
    for name in groups:
        group = handle[name]
        try:
            ok = bool(group.attrs.get("complete", not marked))
            if ok:
                for dataset in group.values():
                    dataset[()]
        except Exception:  # noqa: BLE001 (HDF5 reports damage as assorted errors; all mean "redo this image")
            ok = False
        if not ok:
            del handle[name]
            dropped += 1
    for key in list(handle.attrs):  # fitted states and configs must be readable, too
        handle.attrs[key]
    logger.warning("%s was left by an interrupted run: kept %d images, will redo %d (checked in %.1f s)",
                   path, len(groups) - dropped, dropped, time.perf_counter() - t0)
    return len(groups) - dropped


def _open_writable(path: Path) -> h5py.File:
    """Open (or create) a cache file for appending; an interrupted one is repaired, an unreadable one rebuilt."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        return h5py.File(path, "w", libver=_LIBVER)
    try:
        handle = h5py.File(path, "a", libver=_LIBVER)
    except OSError as exc:
        if "unable to lock file" in str(exc).lower():
            raise InputError("the cache is being written by another process (two runs on one output_dir?)", path) from None
        logger.warning("%s cannot be opened (%s); rebuilding it", path, str(exc).splitlines()[0])
        path.unlink()
        return h5py.File(path, "w", libver=_LIBVER)
    if handle.attrs.get(WRITING_ATTR, False):
        try:
            _repair(handle, path)
        except Exception as exc:  # noqa: BLE001 (damage beyond single images: start again)
            handle.close()
            logger.warning("%s is damaged beyond repair (%s); rebuilding it", path, exc)
            path.unlink()
            return h5py.File(path, "w", libver=_LIBVER)
    return handle


@contextlib.contextmanager
def _open_for_append(path: Path, config: dict, overwrite: bool = False) -> Iterator[h5py.File]:
    """A cache file open for appending, marked as being written until the block finishes without error.

    A kill or an exception leaves the mark, so the next run checks the file (:func:`_repair`) and redoes only
    the images it lost, and :class:`FeatureCache` refuses to read it meanwhile. A file made with another
    configuration is refused, never appended to.
    """
    path = Path(path)
    if overwrite:
        path.unlink(missing_ok=True)
    handle = _open_writable(path)
    try:
        _check_config(handle, config, path)
        if "fuseloc_config" in handle.attrs or len(handle) == 0:
            # Not on a foreign file: the stamp would turn its unmarked groups into "interrupted" ones.
            handle.attrs["fuseloc_config"] = json.dumps(config)
        handle.attrs[WRITING_ATTR] = True
        handle.flush()
        yield handle
        del handle.attrs[WRITING_ATTR]
    finally:
        handle.close()


def open_cache_for_reading(path: str | Path) -> h5py.File:
    """Open a finished cache read-only; refuse one that an interrupted run left behind."""
    path = Path(path)
    if not path.is_file():
        raise InputError("feature file not found", path)
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"cannot open feature file ({str(exc).splitlines()[0]}); delete it to rebuild it", path) from None
    if handle.attrs.get(WRITING_ATTR, False):
        handle.close()
        raise InputError("feature file was left incomplete by an interrupted run; rerun the extraction to finish it", path)
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
    with _open_for_append(output, extractor.config(), overwrite) as handle:
        stamps = {n: image_stamp(Path(image_root) / n) for n in names if (Path(image_root) / n).is_file()}
        done = _fresh_names(handle, names, stamps)
        todo = [n for n in names if n not in done]
        if todo:
            logger.info("extracting %s for %d images into %s", extractor.tag(), len(todo), output)
        batch = max(1, int(getattr(extractor, "batch_size", 1)))
        with tqdm(total=len(todo), desc=f"local {extractor.tag()}", disable=not progress or not todo, leave=False) as bar:
            for start in range(0, len(todo), batch):
                chunk = todo[start : start + batch]
                images = [read_image(Path(image_root) / name) for name in chunk]
                for name, features in zip(chunk, extractor.extract_batch(images), strict=True):
                    write_local(handle, name, features, as_half, stamps.get(name))
                # flushed per batch: a kill loses at most one batch, never a half-written group
                handle.flush()
                bar.update(len(chunk))
    return output


class FeatureCache:
    """Read-only access to a local (and optionally a global) feature file, keeping the handles open."""

    def __init__(self, local_path: str | Path, global_path: str | Path | None = None):
        self.local_path = Path(local_path)
        self.global_path = None if global_path is None else Path(global_path)
        for p in (self.local_path, self.global_path):
            if p is not None and not p.is_file():
                raise InputError("feature file not found", p)
        self._local = open_cache_for_reading(self.local_path)
        self._global = None if self.global_path is None else open_cache_for_reading(self.global_path)

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


# ------------------------------------------------------------------------------- global extractors, VLAD


def read_global(handle: h5py.File, name: str, path: Path | str | None = "") -> np.ndarray:
    if name not in handle or "global_descriptor" not in handle[name]:
        raise InputError(f"no global descriptor for image {name!r}", path)
    desc = np.asarray(handle[name]["global_descriptor"], np.float32).reshape(-1)
    if not np.all(np.isfinite(desc)):
        raise InputError(f"image {name!r}: global descriptor contains NaN or infinite values", path)
    return desc


def write_global(handle: h5py.File, name: str, descriptor: np.ndarray, as_half: bool = False,
                 source_stamp: str | None = None) -> None:
    if name in handle:
        del handle[name]
    group = handle.create_group(name)
    group.create_dataset("global_descriptor", data=descriptor.astype(np.float16 if as_half else np.float32))
    if source_stamp is not None:
        group.attrs["source"] = source_stamp
    group.attrs["complete"] = True


class GlobalExtractor:
    """Base class of global (image retrieval) descriptors: one (G,) vector per image.

    Two kinds exist: networks that look at the image (``uses_image``), and aggregators of the image's local
    features such as VLAD (``uses_local_features``) whose state is trained on the database descriptors by
    :meth:`fit`. :func:`extract_global_features` feeds each what it needs and stores the fitted state in the
    cache, so a resumed extraction describes every image with the same vocabulary.
    """

    #: decode the image and pass it to :meth:`describe`.
    uses_image: bool = True
    #: pass the image's local features to :meth:`describe`; :meth:`fit` gets database descriptors.
    uses_local_features: bool = False
    #: images per :meth:`describe_batch` call.
    batch_size: int = 1

    def tag(self) -> str:
        """A short name that encodes the configuration; used in cache file names."""
        raise NotImplementedError

    def config(self) -> dict:
        """The full configuration, stored in the cache and compared on reuse."""
        raise NotImplementedError

    def fit(self, train_descriptors: np.ndarray) -> GlobalExtractor:
        """Train on (M, D) local descriptors of the database; a no-op for pretrained networks."""
        return self

    @property
    def needs_fit(self) -> bool:
        return False

    def state(self) -> dict[str, np.ndarray]:
        """What :meth:`fit` learned, as arrays to store with the descriptors."""
        return {}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore what :meth:`state` returned."""

    def describe(self, image: np.ndarray | None, local: LocalFeatures | None = None) -> np.ndarray:
        """(G,) float32 descriptor of an RGB uint8 image (H, W, 3) and/or its local features."""
        raise NotImplementedError

    def describe_batch(self, images: Sequence[np.ndarray | None], locals_: Sequence[LocalFeatures | None]) -> list[np.ndarray]:
        return [self.describe(image, local) for image, local in zip(images, locals_, strict=False)]

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return self.describe(image, None)


class Vlad(GlobalExtractor):
    """VLAD over local descriptors with a k-means vocabulary trained on the database (needs no weights).

    Intra-normalised per cluster, then power- (signed square root) and L2-normalised. Works over any local
    feature, which makes it the offline default of every pipeline.

    Args:
        num_clusters: vocabulary size k; the descriptor has k x D dimensions.
        max_training_descriptors: descriptors sampled from the database to train the vocabulary.
        seed: k-means seed.
    """

    uses_image = False
    uses_local_features = True

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

    @property
    def needs_fit(self) -> bool:
        return True

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

    def state(self) -> dict[str, np.ndarray]:
        return {} if self.centroids is None else {"vocabulary": self.centroids}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self.centroids = np.asarray(state["vocabulary"], np.float32)

    def describe(self, image: np.ndarray | None, local: LocalFeatures | None = None) -> np.ndarray:
        if local is None:
            raise InputError("VLAD describes an image from its local features, and none were given")
        return self(local.descriptors)

    def __call__(self, descriptors: np.ndarray) -> np.ndarray:  # type: ignore[override]
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


#: prefix of root attributes that hold a fitted state; attributes, not datasets, because hloc's
#: ``list_h5_names`` takes the parent of every dataset for an image name.
_STATE_ATTR = "fuseloc_state."


def _read_state(handle: h5py.File) -> dict[str, np.ndarray]:
    state = {k[len(_STATE_ATTR):]: np.asarray(v) for k, v in handle.attrs.items() if k.startswith(_STATE_ATTR)}
    if not state and isinstance(handle.get("vocabulary"), h5py.Dataset):
        state = {"vocabulary": np.asarray(handle["vocabulary"])}  # caches written before GlobalExtractor
    return state


def extract_global_features(
    extractor: GlobalExtractor,
    names: Sequence[str],
    output: str | Path,
    image_root: str | Path | None = None,
    local_path: str | Path | None = None,
    train_names: Sequence[str] = (),
    as_half: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Describe ``names`` into ``output`` (``global_descriptor`` per image, hloc's layout). Returns ``output``.

    Args:
        extractor: the global descriptor.
        names: images to describe, relative to ``image_root``.
        output: the global-feats h5 file; images already there are skipped.
        image_root: where images are decoded from (extractors with ``uses_image``).
        local_path: local feature file (extractors with ``uses_local_features``).
        train_names: database images whose local descriptors :meth:`GlobalExtractor.fit` trains on.
        as_half: store float16.
        overwrite: start from an empty file.
        progress: show a progress bar.
    """
    from tqdm import tqdm

    output = Path(output)
    if extractor.uses_image and image_root is None:
        raise InputError(f"{extractor.tag()} describes images, but no image root was given", output)
    if extractor.uses_local_features and local_path is None:
        raise InputError(f"{extractor.tag()} aggregates local features, but no local feature file was given", output)
    local = None if local_path is None or not extractor.uses_local_features else open_cache_for_reading(local_path)
    try:
        config = extractor.config()
        if local is not None:
            config = {**config, "local": json.loads(local.attrs.get("fuseloc_config", "{}"))}
        if extractor.needs_fit:
            config["train_images"] = config_hash(sorted(train_names))
        with _open_for_append(output, config, overwrite) as handle:
            if extractor.needs_fit:
                state = _read_state(handle)
                if state:
                    extractor.load_state(state)
                else:
                    if local is None or not train_names:
                        raise InputError(f"{extractor.tag()} must be trained, but no training images were given", output)
                    train = np.concatenate([read_local(local, n, local_path).descriptors for n in train_names])
                    extractor.fit(train)
                    for key, value in extractor.state().items():
                        handle.attrs[_STATE_ATTR + key] = value
            # A global descriptor is as fresh as what it was computed from: the image, or its local features.
            if extractor.uses_image:
                stamps = {n: image_stamp(Path(image_root) / n) for n in names if (Path(image_root) / n).is_file()}  # type: ignore[arg-type]
            else:
                stamps = {n: str(local[n].attrs["source"]) for n in names if local is not None and n in local
                          and "source" in local[n].attrs}
            done = _fresh_names(handle, names, stamps)
            todo = [n for n in names if n not in done]
            batch = max(1, int(extractor.batch_size))
            with tqdm(total=len(todo), desc=f"global {extractor.tag()}", disable=not progress or not todo, leave=False) as bar:
                for start in range(0, len(todo), batch):
                    chunk = todo[start : start + batch]
                    images = [read_image(Path(image_root) / n) if extractor.uses_image else None for n in chunk]  # type: ignore[arg-type]
                    locals_ = [read_local(local, n, local_path) if local is not None else None for n in chunk]
                    for name, desc in zip(chunk, extractor.describe_batch(images, locals_), strict=True):
                        write_global(handle, name, np.asarray(desc, np.float32).reshape(-1), as_half, stamps.get(name))
                    handle.flush()
                    bar.update(len(chunk))
    finally:
        if local is not None:
            local.close()
    return output


# ------------------------------------------------------------------------- existing (e.g. hloc) feature files


def check_feature_file(path: str | Path, names: Sequence[str], kind: str = "local") -> str:
    """Check that an existing feature file (hloc's or ours) covers ``names``; return a tag for cache keys.

    The tag carries the file's name, size and modification time, so caches built from it (triangulated
    maps, fused maps) are not reused once the file changes.

    Args:
        path: ``feats-*.h5`` (kind ``local``) or ``global-feats-*.h5`` (kind ``global``).
        names: images that must be present, e.g. ``db/1.jpg`` (a nested group in the file).
        kind: ``local`` or ``global``.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{kind} feature file not found", path)
    key = "keypoints" if kind == "local" else "global_descriptor"
    try:
        handle = h5py.File(path, "r")
    except OSError:
        raise InputError("not a readable HDF5 feature file", path) from None
    with handle:
        present = {name for name in _feature_groups(handle, (key,)) if handle[name].attrs.get("complete", True)}
    missing = [n for n in names if n not in present]
    if missing:
        shown = ", ".join(repr(n) for n in missing[:5])
        raise InputError(f"{len(missing)} of {len(names)} images have no {kind} features ({key!r}) in this file, "
                         f"first missing: {shown}", path)
    stat = path.stat()
    return f"{path.stem}-{config_hash([str(path.resolve()), stat.st_size, stat.st_mtime_ns])}"
