"""Extraction runs: read images, feed an extractor, and append what it returns to a feature file.

Both runs resume: images already in the file (complete, and from the same image file) are skipped, and a
killed run leaves a file that the next one repairs (:mod:`fuseloc.data.feature_cache`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from fuseloc.cachekeys import image_stamps, key_of
from fuseloc.data.extractors.base import GlobalExtractor, LocalExtractor
from fuseloc.data.feature_cache import (
    fresh_names,
    open_cache_for_reading,
    open_for_append,
    read_local,
    read_state,
    write_global,
    write_local,
    write_state,
)
from fuseloc.errors import InputError
from fuseloc.types import Camera

logger = logging.getLogger(__name__)


#: cv2 decoding flags of every image fuseloc reads: colour, and the pixels as stored, WITHOUT the rotation an
#: EXIF Orientation tag asks for (COLMAP and hloc decode the same way, and intrinsics describe the stored pixels)
IMAGE_READ_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
UNDECODABLE = "cannot decode image (corrupt or unsupported format)"


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as RGB uint8 (H, W, 3) as stored, ignoring EXIF orientation (:data:`IMAGE_READ_FLAGS`),
    with a clear error for missing or undecodable files and a warning for a JPEG cut short."""
    path = Path(path)
    if not path.is_file():
        raise InputError("image not found", path)
    # imread, not imdecode of the bytes: it keeps the decodable part of a JPEG cut short, imdecode refuses it.
    image = cv2.imread(str(path), IMAGE_READ_FLAGS)
    if image is None:
        raise InputError(UNDECODABLE, path)
    if is_truncated_jpeg(path):
        logger.warning("%s: JPEG file is truncated (no end-of-image marker); using the part that decodes", path)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def decode_image(data: bytes, where: str | Path) -> np.ndarray:
    """Image file bytes (an upload) as RGB uint8 (H, W, 3) with :data:`IMAGE_READ_FLAGS`; ``where`` names it in errors."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), IMAGE_READ_FLAGS) if data else None
    if image is None:
        raise InputError(UNDECODABLE, where)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def is_truncated_jpeg(path: str | Path) -> bool:
    """Whether ``path`` is a JPEG without its end-of-image marker (FF D9) near its end: a cut download, which
    libjpeg decodes as far as it goes and pads grey."""
    with open(path, "rb") as f:
        if f.read(2) != b"\xff\xd8":
            return False
        f.seek(max(f.seek(0, 2) - 64, 2))
        return b"\xff\xd9" not in f.read()


def check_image_size(path: str | Path, image_size: tuple[int, int], camera: Camera) -> None:
    """A one-line InputError naming the image ``path`` and both sizes when its decoded ``(width, height)`` is not
    its camera's: intrinsics for another resolution would give a confident wrong pose. No rescaling is guessed,
    even at the same aspect ratio: which side is wrong (a resized image, intrinsics of a resized copy) is the
    user's to say."""
    width, height = int(image_size[0]), int(image_size[1])
    if (width, height) == (camera.width, camera.height):
        return
    hint = ""
    if abs(width * camera.height - height * camera.width) <= max(width, height):
        hint = (f" (same aspect ratio: scale the intrinsics by {width / camera.width:.4g}, or use the image they "
                "were calibrated for)")
    raise InputError(f"image is {width}x{height} pixels but its camera says {camera.width}x{camera.height}{hint}", path)


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
    with open_for_append(output, extractor.config(), overwrite) as handle:
        stamps = image_stamps(image_root, names)
        done = fresh_names(handle, names, stamps)
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

    Each extractor gets what it needs: decoded images (``uses_image``) and/or the images' local features
    (``uses_local_features``). One that must be trained (``needs_fit``, e.g. VLAD) is fitted on the local
    descriptors of ``train_names`` and its state is stored in the file, so a resumed extraction describes every
    image with the same vocabulary.

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
            config["train_images"] = key_of(sorted(train_names))
        with open_for_append(output, config, overwrite) as handle:
            if extractor.needs_fit:
                state = read_state(handle)
                if state:
                    extractor.load_state(state)
                else:
                    if local is None or not train_names:
                        raise InputError(f"{extractor.tag()} must be trained, but no training images were given", output)
                    train = np.concatenate([read_local(local, n, local_path).descriptors for n in train_names])
                    extractor.fit(train)
                    write_state(handle, extractor.state())
            # A global descriptor is as fresh as what it was computed from: the image, or its local features.
            if extractor.uses_image:
                stamps = image_stamps(image_root, names)  # type: ignore[arg-type]
            else:
                stamps = {n: str(local[n].attrs["source"]) for n in names if local is not None and n in local
                          and "source" in local[n].attrs}
            done = fresh_names(handle, names, stamps)
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
