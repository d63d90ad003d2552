"""Small file helpers: atomic writes, line-numbered text parsing (cache keys: :mod:`fuseloc.cachekeys`)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fuseloc.errors import InputError


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it over ``path``.

    A crash or exception leaves ``path`` untouched (either absent or the previous version), so a later run
    never trusts a half-written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp-" + str(os.getpid()), dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes the file private (0600); results and caches get the usual umask-based mode instead.
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj)}")


def iter_lines(path: str | Path) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(line_number, tokens)`` for non-empty, non-comment lines, split on any whitespace."""
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", path)
    # utf-8-sig: a byte-order mark (Windows editors) is not part of the first name
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            yield number, stripped.split()


def parse_floats(tokens: list[str], path: str | Path, line: int, what: str) -> list[float]:
    try:
        values = [float(t) for t in tokens]
    except ValueError:
        raise InputError(f"expected numbers for {what}, got {' '.join(tokens)!r}", path, line) from None
    return values


#: file that marks a folder as fuseloc's own output: the only kind of folder ``overwrite`` may delete
OUTPUT_MARKER = ".fuseloc-output"


def claim_output_dir(path: str | Path) -> Path:
    """Create the output folder ``path`` and mark it as fuseloc's (:data:`OUTPUT_MARKER`), with a one-line
    InputError when it is a file or cannot be written. A folder that already holds files and no marker (the
    user's, or an older fuseloc's) is used but not marked, so ``overwrite`` will never delete it."""
    path = Path(path)
    for parent in (path, *path.parents):
        if parent.exists() and not parent.is_dir():
            raise InputError("output folder: this path is a file, not a folder", parent)
    try:
        path.mkdir(parents=True, exist_ok=True)
        marker = path / OUTPUT_MARKER
        if not marker.is_file() and not any(path.iterdir()):
            write_text_atomic(marker, "written by fuseloc: `--overwrite true` may delete this folder\n")
        else:  # prove the folder is writable before any work, not after hours of it
            with tempfile.TemporaryFile(dir=path):
                pass
    except PermissionError:
        raise InputError("output folder is not writable", path) from None
    except OSError as exc:
        raise InputError(f"cannot write to the output folder ({exc.strerror or exc})", path) from None
    return path


def remove_output_dir(path: str | Path, protected: list[Path]) -> bool:
    """Delete the output folder ``path`` for an overwrite; False when it does not exist.

    Only a folder fuseloc marked as its own (:func:`claim_output_dir`) is deleted, never one that is, or holds,
    any of ``protected`` (the dataset, its images, the working directory); anything else is a one-line
    InputError and nothing is deleted.
    """
    import shutil

    path = Path(path)
    if not path.is_dir():
        return False
    resolved = path.resolve()
    for keep in protected:
        keep = Path(keep).resolve()
        if keep == resolved or resolved in keep.parents:
            raise InputError(f"overwrite refused: this folder holds {keep}; nothing was deleted", path)
    if not (path / OUTPUT_MARKER).is_file():
        raise InputError(f"overwrite refused: the folder has no {OUTPUT_MARKER} marker, so fuseloc did not make "
                         "it; nothing was deleted (delete it yourself if it is an old output)", path)
    shutil.rmtree(path)
    return True


@contextlib.contextmanager
def atomic_directory(path: str | Path, marker: str) -> Iterator[Path]:
    """Yield an empty temporary directory next to ``path``; on success it replaces ``path``.

    ``marker`` names the file that identifies a directory this helper wrote (e.g. ``bundle.json``): an existing
    ``path`` is replaced only when it holds that file (or is empty), so a mistyped path never deletes someone's
    folder. A crash or exception leaves ``path`` as it was; the swap is two renames, so for a moment ``path``
    may be absent, never half-written.
    """
    import shutil

    path = Path(path)
    if path.exists() and not (path.is_dir() and ((path / marker).is_file() or not any(path.iterdir()))):
        raise InputError(f"exists and is not a directory this tool wrote (no {marker}); refusing to replace it", path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    old = None
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / "previous")
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old / "previous", path)
                raise
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
