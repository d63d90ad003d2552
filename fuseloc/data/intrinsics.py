"""Intrinsics of a photo that comes without a query list: a ``MODEL W H params`` string, or its EXIF data.

EXIF intrinsics are COLMAP's (``pycolmap.infer_camera_from_image``): the focal length in millimetres and the
sensor width of the camera model (COLMAP's sensor database), or the 35 mm-equivalent focal length, give the
focal length in pixels of a ``SIMPLE_RADIAL`` camera with its principal point at the centre. Without either
the focal length is only COLMAP's guess (1.2 x the longest side), which gives a wrong pose as confidently as a
right one, so it is refused unless the caller allows the guess.

pycolmap sizes the camera by the stored pixels (EXIF orientation not applied). When the decoder applied the
orientation (a quarter turn: tags 5 to 8), the camera is turned the same way, so pixels and intrinsics always
agree whatever the image reader's orientation policy.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fuseloc.errors import InputError
from fuseloc.types import SINGLE_FOCAL_MODELS, Camera

logger = logging.getLogger(__name__)

#: EXIF orientation tag
ORIENTATION_TAG = 0x0112

#: orientations whose display transform is a quarter turn (width and height swap)
QUARTER_TURNS = {5, 6, 7, 8}


def parse_camera(text: str, where: str | Path | None = None) -> Camera:
    """``MODEL W H params...`` (the query-list format without the name) as a Camera; a one-line InputError."""
    try:
        return Camera.from_tokens(str(text).split())
    except InputError as exc:
        raise InputError(f"bad camera {text!r}: {exc.raw_message}", where) from None


def exif_orientation(path: str | Path) -> int:
    """The EXIF orientation tag of an image file (1, upright, when there is none or it cannot be read)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            value = image.getexif().get(ORIENTATION_TAG, 1)
    except (OSError, UnidentifiedImageError, ValueError):
        return 1
    try:
        return int(value) if 1 <= int(value) <= 8 else 1
    except (TypeError, ValueError):
        return 1


def camera_from_exif(path: str | Path, decoded_size: tuple[int, int], allow_guess: bool = False) -> Camera:
    """The camera of the image file ``path`` from its EXIF data, for the pixels as decoded.

    Args:
        path: the image file.
        decoded_size: (width, height) of the decoded pixels.
        allow_guess: accept COLMAP's focal-length guess (1.2 x the longest side) when the EXIF data has no
            focal length.

    Raises:
        InputError: no EXIF focal length (and no guess allowed), or a decoded size that fits neither
            orientation of the stored image.
    """
    import pycolmap

    path = Path(path)
    try:
        inferred = pycolmap.infer_camera_from_image(str(path))
    except Exception as exc:  # noqa: BLE001 (pycolmap raises its own types for unreadable files)
        raise InputError(f"cannot read EXIF intrinsics ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})", path) from None
    if not inferred.has_prior_focal_length and not allow_guess:
        raise InputError("no EXIF focal length (or unknown camera model); give the intrinsics "
                         "(--camera 'MODEL W H params' or a query list)", path)
    model = inferred.model.name if hasattr(inferred.model, "name") else str(inferred.model)
    camera = Camera(model, int(inferred.width), int(inferred.height), tuple(float(p) for p in inferred.params))
    width, height = decoded_size
    if (width, height) == (camera.width, camera.height):
        return camera
    if (width, height) == (camera.height, camera.width) and exif_orientation(path) in QUARTER_TURNS:
        return _quarter_turned(camera)
    raise InputError(f"decoded image is {width}x{height} but its file stores {camera.width}x{camera.height} pixels", path)


def _quarter_turned(camera: Camera) -> Camera:
    """The camera of the image turned by a quarter turn (EXIF intrinsics: principal point at the centre)."""
    width, height = camera.height, camera.width
    if camera.model in SINGLE_FOCAL_MODELS:
        params = (camera.params[0], width / 2, height / 2, *camera.params[3:])
    else:
        fx, fy = camera.params[0], camera.params[1]
        params = (fy, fx, width / 2, height / 2, *camera.params[4:])
    return Camera(camera.model, width, height, params)
