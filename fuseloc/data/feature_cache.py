"""Feature files in hloc's h5 layout: reading, writing, completion marks, crash repair, and checking hloc's files.

h5 layout (one file per extractor configuration, one group per relative image name, as hloc)::

    <name>/keypoints          (N, 2) float, pixel coords with the top-left pixel centre at (0, 0) (hloc)
    <name>/descriptors        (D, N) float16/float32 (hloc stores D x N)
    <name>/scores             (N,)
    <name>/image_size         (2,) int, (width, height) of the original image
    <name>/global_descriptor  (G,) in global-feature files

In memory, :class:`~fuseloc.types.LocalFeatures` holds keypoints in COLMAP's convention (top-left pixel centre at
(0.5, 0.5)) and descriptors as (N, D): the +0.5 shift happens only here, on read and write.

Our files carry more than hloc's, all of it ignored by hloc: the extractor configuration (root attribute
``fuseloc_config``), a completion mark per image group (``complete``, written last), the image file's stamp
(``source``), fitted states such as a VLAD vocabulary (root attributes ``fuseloc_state.*``), and while a process
appends, the root attribute :data:`WRITING_ATTR`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import h5py
import numpy as np

from fuseloc.cachekeys import file_stamp, key_of, same_inputs, stamp_matches
from fuseloc.errors import InputError
from fuseloc.types import LocalFeatures

logger = logging.getLogger(__name__)

#: hloc pixel convention -> COLMAP pixel convention.
HLOC_TO_COLMAP_SHIFT = 0.5

#: Root attribute set while a process appends to a cache and removed when it finishes cleanly: a file that
#: still carries it was interrupted (killed, or stopped by an error) and is checked before anything in it is used.
WRITING_ATTR = "fuseloc_writing"

#: Lowest HDF5 format our caches are written in. 1.8 has the dense attribute storage that fitted states (VLAD
#: vocabularies over 64 kB) need; newer bounds ("latest") give a v3 superblock whose consistency flags a killed
#: writer leaves set, after which HDF5 refuses to open the file at all, so a kill would lose the whole cache.
_LIBVER = ("v108", "latest")

#: prefix of root attributes that hold a fitted state; attributes, not datasets, because hloc's
#: ``list_h5_names`` takes the parent of every dataset for an image name.
_STATE_ATTR = "fuseloc_state."


# ------------------------------------------------------------------------------------------ image groups


def write_local(handle: h5py.File, name: str, features: LocalFeatures, as_half: bool = False,
                source_stamp: str | None = None) -> None:
    """Write one image's local features in hloc's layout (replacing an existing group).

    ``source_stamp`` (see :func:`~fuseloc.cachekeys.file_stamp`) lets a later run notice that the image
    changed on disk.
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


def write_global(handle: h5py.File, name: str, descriptor: np.ndarray, as_half: bool = False,
                 source_stamp: str | None = None) -> None:
    if name in handle:
        del handle[name]
    group = handle.create_group(name)
    group.create_dataset("global_descriptor", data=descriptor.astype(np.float16 if as_half else np.float32))
    if source_stamp is not None:
        group.attrs["source"] = source_stamp
    group.attrs["complete"] = True


def read_global(handle: h5py.File, name: str, path: Path | str | None = "") -> np.ndarray:
    if name not in handle or "global_descriptor" not in handle[name]:
        raise InputError(f"no global descriptor for image {name!r}", path)
    desc = np.asarray(handle[name]["global_descriptor"], np.float32).reshape(-1)
    if not np.all(np.isfinite(desc)):
        raise InputError(f"image {name!r}: global descriptor contains NaN or infinite values", path)
    return desc


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


def fresh_names(handle: h5py.File, names: Sequence[str], stamps: dict[str, str]) -> set[str]:
    """Complete groups whose recorded source stamp matches (:func:`~fuseloc.cachekeys.stamp_matches`)."""
    complete = _complete_names(handle)
    fresh = set()
    for name in names:
        if name in complete:
            if stamp_matches(handle[name].attrs.get("source"), stamps.get(name)):
                fresh.add(name)
    return fresh


# ------------------------------------------------------------------------------------------ fitted states


def read_state(handle: h5py.File) -> dict[str, np.ndarray]:
    """The fitted state stored with a global feature file (empty when there is none)."""
    state = {k[len(_STATE_ATTR):]: np.asarray(v) for k, v in handle.attrs.items() if k.startswith(_STATE_ATTR)}
    if not state and isinstance(handle.get("vocabulary"), h5py.Dataset):
        state = {"vocabulary": np.asarray(handle["vocabulary"])}  # caches written before GlobalExtractor
    return state


def write_state(handle: h5py.File, state: dict[str, np.ndarray]) -> None:
    """Store a fitted state (e.g. a VLAD vocabulary) with the descriptors computed from it."""
    for key, value in state.items():
        handle.attrs[_STATE_ATTR + key] = value


# ------------------------------------------------------------------------------ opening, marks and repair


def _check_config(handle: h5py.File, config: dict, path: Path) -> None:
    stored = handle.attrs.get("fuseloc_config")
    if stored is None:
        return  # a file written by hloc or by hand: no configuration to compare
    if not same_inputs(json.loads(stored), config):  # refused, not rebuilt: fuseloc.cachekeys states why
        raise InputError(
            f"feature cache was made with another configuration ({stored}, now {json.dumps(config)}); "
            "delete it or rebuild it with overwrite (evaluate.py --overwrite true)",
            path,
        )


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
        if "already open" in str(exc).lower():
            # this process still reads it: a programming error, and no reason to throw the cache away
            raise RuntimeError(f"{path} is open for reading in this process; close it before writing") from exc
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
def open_for_append(path: Path, config: dict, overwrite: bool = False) -> Iterator[h5py.File]:
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


# ------------------------------------------------------------------------------------------------ reading


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

    def sources(self, name: str) -> list[str | None]:
        """The source stamps recorded with ``name``'s local and global features (what they were computed from:
        the image file's stamp); None where a file records none (hloc's files, keyed by their own stamp)."""
        handles = [self._local] if self._global is None else [self._local, self._global]
        return [str(h[name].attrs["source"]) if name in h and "source" in h[name].attrs else None for h in handles]

    def image_size(self, name: str) -> tuple[int, int] | None:
        """(width, height) of the image ``name``'s local features were extracted from; None when not recorded."""
        group = self._local.get(name)
        if group is None or "image_size" not in group:
            return None
        width, height = (int(v) for v in np.asarray(group["image_size"]).reshape(-1)[:2])
        return (width, height) if width > 0 and height > 0 else None

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
    return f"{path.stem}-{key_of([str(path.resolve()), file_stamp(path)])}"
