"""Cache keys and the staleness policy: how every cache records what it was computed from, and what a run does
when that no longer matches.

Recipe
------
A *key* is the first :data:`KEY_LENGTH` hex digits of the SHA-1 of the canonical JSON (sorted keys) of the
inputs a cache is computed from (:func:`key_of`): settings as plain values, arrays by a *digest* of their
dtype, shape and bytes (:func:`array_digest`, the same hash and length), files by a *stamp* of their size and
modification time (:func:`file_stamp`), and other keys as strings. A layer keys its own objects from these
parts (``fuseloc.eval.keys``: fusions, scenes, queries); nothing else hashes. The parts of a key are the inputs
that shape the result, plus a version number that the code bumps when a fixed choice of its own or a file
format changes (``INDEX_CACHE_VERSION``, the town's ``GENERATOR_VERSION``, fused maps' ``MAP_FORMAT_VERSION``);
a setting applied after loading (faiss' ``nprobe``) is no part of it.

Policy
------
Derived files, named by their key (:func:`keyed_name`): the town directory, triangulated scenes
(``sfm-*.npz``), global feature files of fitted or local-feature aggregators (their tag ends with a key: a
VLAD vocabulary's settings and training images), fused maps (``map-*.h5``) and approximate indexes
(``index-*.faiss``).
    A changed input gives another name, so a new file; the old one is left alone (another configuration may
    still use it). A file is written atomically, so a name present is a finished file; one that still cannot
    be read (truncated or damaged from outside) is rebuilt and replaced, with a warning (:func:`read_keyed`).
    The town, a directory, is trusted only with its completion record (written last), else generated again.

Append-only caches, which carry their inputs inside and grow entry by entry:
    feature files (``feats-*.h5``, ``global-feats-*.h5``): the extractor configuration is recorded in the file.
        Another configuration is *refused* (an error naming ``--overwrite``) until the user overwrites: the
        name comes from the extractor's tag, so a mismatch means a tag that failed to tell two configurations
        apart or a file named by hand, and silently replacing hours of extraction is worse than stopping. Each
        image entry carries its image file's stamp (:func:`stamp_matches`): an entry from a changed image is
        redone, one without a stamp (hloc's files) is trusted. An interrupted file is repaired, an unreadable
        one rebuilt with a warning (``fuseloc.data.feature_cache``).
    prediction logs (``<method>/predictions.jsonl``): the inputs (map key, localizer settings, query key) are
        recorded next to the log (``run_config.json``). Another record *discards* the log with a warning and
        localizes every query again: predictions are cheap to redo and must never mix two configurations.

Both kinds compare records with :func:`same_inputs`, which sees what a JSON file would store.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

#: hex digits of every key and digest (48 bits: a collision among one cache folder's files is out of reach)
KEY_LENGTH = 12

T = TypeVar("T")


def _hash(*blobs: bytes) -> str:
    digest = hashlib.sha1()
    for blob in blobs:
        digest.update(blob)
    return digest.hexdigest()[:KEY_LENGTH]


def _canonical(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return array_digest(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} cannot be part of a cache key: give its settings as plain values")


def canonical_json(obj: Any) -> str:
    """The JSON a key hashes: sorted keys, tuples as lists, arrays as their digest, paths as strings."""
    return json.dumps(obj, sort_keys=True, default=_canonical)


def key_of(obj: Any) -> str:
    """The key of ``obj`` (JSON values, arrays, paths): equal for equal content, whatever the order of dict keys."""
    return _hash(canonical_json(obj).encode())


def array_digest(array: np.ndarray) -> str:
    """Digest of an array's content: dtype, shape and bytes (so a reshape or a cast is another digest)."""
    array = np.asarray(array)
    return _hash(f"{array.dtype.str}{array.shape}".encode(), memoryview(np.ascontiguousarray(array)).cast("B"))


def keyed_name(prefix: str, key: str, suffix: str = "") -> str:
    """File name of a derived cache: ``<prefix>-<key><suffix>``, e.g. ``keyed_name("map", key, ".h5")``."""
    return f"{prefix}-{key}{suffix}"


def file_stamp(path: str | Path) -> str:
    """Identity of a file's content as far as caches are concerned: ``<size>-<mtime in ns>`` (not a hash of the
    bytes, which would mean reading every image on every run)."""
    st = Path(path).stat()
    return f"{st.st_size}-{st.st_mtime_ns}"


def image_stamps(root: str | Path, names: Sequence[str]) -> dict[str, str]:
    """The :func:`file_stamp` of each named image under ``root`` that exists."""
    root = Path(root)
    return {n: file_stamp(root / n) for n in names if (root / n).is_file()}


def stamp_matches(recorded: str | None, current: str | None) -> bool:
    """Whether an entry recorded with stamp ``recorded`` is still fresh: it is unless both stamps are known and
    differ (entries without one, e.g. hloc's, are trusted; so are entries whose source cannot be stamped now)."""
    return recorded is None or current is None or recorded == current


def same_inputs(recorded: Any, current: Any) -> bool:
    """Whether the inputs recorded in an append-only cache (as parsed JSON) are ``current``, compared as a JSON
    file would store them (tuples as lists, int and float keys as strings)."""
    return recorded == json.loads(canonical_json(current))


def read_keyed(path: Path, read: Callable[[Path], T], damage: tuple[type[BaseException], ...], what: str,
               log: logging.Logger) -> T | None:
    """The derived file ``path`` read with ``read``; None when it is absent, or unreadable (``read`` raised one of
    ``damage``), then with a warning on ``log``: the caller builds it again and replaces it."""
    if not path.is_file():
        return None
    try:
        return read(path)
    except damage as error:
        log.warning("%s %s is unreadable (%s); rebuilding it", what, path, (str(error) or type(error).__name__).splitlines()[0])
        return None
