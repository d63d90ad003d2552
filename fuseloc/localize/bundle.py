"""Map bundles: one folder with everything that localizes a new photo against a map, and nothing else.

Layout::

    PATH/
      bundle.json         format and version, config hash, the extractors (class path, init args, config,
                          weight file reference), localizer settings, file sizes
      map.h5              the fused map: point positions and fused descriptors, the fitted fusion (class, init
                          args, state), database names, global descriptors and poses (fallback poses)
      global_state.npz    what the global extractor learned from the database (VLAD's vocabulary); absent for
                          pretrained networks, whose weight file bundle.json names with its SHA-256
      index.faiss         the built search index (approximate kinds only: an exact index is a copy of the
                          descriptors and is rebuilt on load)

A bundle is written by ``evaluate.py --export_bundle PATH`` (:func:`export_bundle`) and read by
:func:`load_bundle`, which needs no dataset, no feature cache and no network: queries are described by the
same extractors with the same settings and state as the map's images, fused by the same fusion and matched
against the same index, so a query localizes exactly as in the evaluation that exported the bundle.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import logging
import os
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from fuseloc.cachekeys import key_of, same_inputs
from fuseloc.data.extract import check_image_size, decode_image, read_image
from fuseloc.data.extractors.base import GlobalExtractor, LocalExtractor, TorchExtractor
from fuseloc.data.intrinsics import camera_from_exif, parse_camera
from fuseloc.errors import InputError
from fuseloc.io import atomic_directory, write_json_atomic
from fuseloc.localize.fused_map import FusedMap
from fuseloc.localize.index import IndexConfig, MapIndex
from fuseloc.localize.pipeline import Localizer, LocalizerConfig, QueryMatches
from fuseloc.localize.pose import PnPConfig
from fuseloc.types import Camera, Pose, project

logger = logging.getLogger(__name__)

BUNDLE_FORMAT = "fuseloc-bundle"
#: Bumped whenever the layout or bundle.json's fields change; another version is refused with a clear error.
BUNDLE_FORMAT_VERSION = 1
MANIFEST = "bundle.json"
MAP_FILE = "map.h5"
GLOBAL_STATE_FILE = "global_state.npz"
INDEX_FILE = "index.faiss"


# ------------------------------------------------------------------------------------------- extractors


@dataclass(frozen=True)
class ExtractorSpec:
    """How to make an extractor again: class path and init args, checked against the recorded ``config``.

    Attributes:
        class_path: import path of the extractor class.
        init_args: constructor arguments (``device`` left to the loading machine).
        config: ``extractor.config()`` at export; the rebuilt extractor must report the same.
        tag: ``extractor.tag()`` (the feature cache name), for people.
        weights_file: the weight file the network was loaded from at export (a reference, not a copy).
        weights_sha256: its SHA-256; the loading machine's file must have the same.
    """

    class_path: str
    init_args: dict
    config: dict
    tag: str
    weights_file: str | None = None
    weights_sha256: str | None = None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def extractor_spec(extractor: LocalExtractor | GlobalExtractor) -> ExtractorSpec:
    """The :class:`ExtractorSpec` of a configured extractor; an InputError when it cannot be made again."""
    cls = type(extractor)
    init_args = {}
    for name, param in inspect.signature(cls.__init__).parameters.items():
        if name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if name == "device":
            init_args[name] = None
            continue
        if not hasattr(extractor, name):
            raise InputError(f"cannot export {cls.__name__}: it does not keep its argument {name!r}, so a bundle "
                             "could not make it again")
        value = getattr(extractor, name)
        init_args[name] = str(value) if isinstance(value, Path) else value
    try:
        json.dumps(init_args)
    except TypeError as exc:
        raise InputError(f"cannot export {cls.__name__}: an argument is not a plain value ({exc})") from None
    weights = getattr(extractor, "_weights_path", None)
    return ExtractorSpec(f"{cls.__module__}.{cls.__qualname__}", init_args, extractor.config(), extractor.tag(),
                         None if weights is None else str(Path(weights).resolve()),
                         None if weights is None else _sha256(Path(weights)))


def instantiate_extractor(spec: ExtractorSpec, device: str | None, where: Path):  # noqa: ANN201 (an extractor)
    """The extractor of ``spec`` on ``device``, checked to be the exported one (config and weight file)."""
    module_name, _, class_name = spec.class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError):
        raise InputError(f"extractor class {spec.class_path} not found in this fuseloc", where) from None
    args = dict(spec.init_args)
    if "device" in args:
        args["device"] = device
    extractor = cls(**args)  # a missing weight file fails here, naming the file it expects
    if not same_inputs(spec.config, extractor.config()):
        raise InputError(f"{spec.tag}: this fuseloc configures the extractor differently from the one that exported "
                         "the bundle; export it again", where)
    weights = getattr(extractor, "_weights_path", None)
    if spec.weights_sha256 is not None and weights is not None and _sha256(Path(weights)) != spec.weights_sha256:
        raise InputError(f"{spec.tag}: weight file {weights} differs from the one the map was built with "
                         f"({spec.weights_file}, sha256 {spec.weights_sha256[:12]}...)", where)
    return extractor


# ----------------------------------------------------------------------------------------------- export


def export_bundle(
    path: str | Path,
    fused_map: FusedMap,
    localizer_config: LocalizerConfig,
    local_extractor: LocalExtractor,
    global_extractor: GlobalExtractor,
    global_state: dict[str, np.ndarray] | None = None,
    index: MapIndex | None = None,
    method: str = "",
    source: dict | None = None,
) -> Path:
    """Write a bundle folder at ``path`` (atomically: a killed export leaves the previous bundle or none).

    Args:
        path: the bundle folder; an existing bundle there is replaced, any other existing folder refused.
        fused_map: the fused map (it carries the fitted fusion).
        localizer_config: query-time settings (``index.use_gpu`` is recorded off; :func:`load_bundle` sets it).
        local_extractor, global_extractor: the extractors that described the map's images.
        global_state: what ``global_extractor`` learned (:meth:`GlobalExtractor.state`); None: its own.
        index: the built search index over ``fused_map``'s descriptors; stored when approximate.
        method: the evaluated method's label.
        source: where the map came from (benchmark, feature tags...), recorded for people.
    """
    path = Path(path)
    local_spec, global_spec = extractor_spec(local_extractor), extractor_spec(global_extractor)
    state = global_extractor.state() if global_state is None else global_state
    if global_extractor.needs_fit and not state:
        raise InputError(f"{global_spec.tag} is not fitted: nothing to put in the bundle", path)
    localizer_config = replace(localizer_config, index=replace(localizer_config.index, use_gpu=False))
    num_points, dim = fused_map.descriptors.shape
    index_kind = localizer_config.index.resolved_kind(num_points)
    manifest: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_FORMAT_VERSION,
        "method": method,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "local_features": asdict(local_spec),
        "global_features": {**asdict(global_spec), "state_file": GLOBAL_STATE_FILE if state else None},
        "localizer": asdict(localizer_config),
        "map": {"file": MAP_FILE, "points": num_points, "dim": dim, "images": len(fused_map.db_names),
                "key": fused_map.config.get("key"), "fusion_class": fused_map.fusion_class,
                "fusion_args": fused_map.fusion_args},
        "index": {"kind": index_kind, "file": None},
        "source": source or {},
    }
    from fuseloc import __version__

    manifest["fuseloc_version"] = __version__
    with atomic_directory(path, MANIFEST) as tmp:
        fused_map.save(tmp / MAP_FILE)
        if state:
            np.savez(tmp / GLOBAL_STATE_FILE, **{k: np.asarray(v) for k, v in state.items()})
        if index_kind != "flat":
            if index is None:
                raise InputError(f"the {index_kind} index of the map must be given to export it", path)
            index.save(tmp / INDEX_FILE)
            manifest["index"]["file"] = INDEX_FILE
        manifest["files"] = {p.name: p.stat().st_size for p in sorted(tmp.iterdir())}
        # What localization depends on, file contents included (sizes stand in for the big ones).
        manifest["config_hash"] = key_of({k: manifest[k] for k in ("local_features", "global_features", "localizer",
                                                                    "map", "index", "files", "format_version")}
                                         | {"state": {k: np.asarray(v) for k, v in state.items()}})
        write_json_atomic(tmp / MANIFEST, manifest)
    logger.info("exported bundle %s (%s, %d points, %s index)", path, method or "map", num_points, index_kind)
    return path


# ---------------------------------------------------------------------------------------------- results


@dataclass
class MatchDetails:
    """The 2D-3D matches of a localized photo, for drawing: ``p2d`` (M, 2) pixels, ``p3d`` (M, 3) points,
    ``inliers`` (M,) bool (reprojection error under the RANSAC threshold at the returned pose)."""

    p2d: np.ndarray
    p3d: np.ndarray
    inliers: np.ndarray


@dataclass
class LocalizationResult:
    """What :meth:`Bundle.localize` returns for one photo.

    Attributes:
        name: the photo's name (its file name, or what the caller passed).
        pose: world-to-camera pose; when ``success`` is False, the nearest database image's pose (a fallback,
            not an estimate).
        success: PnP found at least ``min_inliers`` inliers.
        num_keypoints: keypoints detected in the photo.
        num_matches: 2D-3D matches given to PnP.
        num_inliers: RANSAC inliers.
        reason: why localization failed ('' on success).
        timings: seconds per stage (decode, local_features, global_features, fusion, search, pnp, total).
        camera: the intrinsics used.
        camera_source: where they came from: ``given`` (the caller), ``list`` (a query list), ``exif``.
        matches: the matches (for drawing), None when there were none.
    """

    name: str
    pose: Pose
    success: bool
    num_keypoints: int = 0
    num_matches: int = 0
    num_inliers: int = 0
    reason: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    camera: Camera | None = None
    camera_source: str = "given"
    matches: MatchDetails | None = field(default=None, repr=False)

    def to_line(self) -> str:
        """``name qw qx qy qz tx ty tz`` (the poses.txt / submission format)."""
        return self.pose.to_line(self.name)

    def to_record(self) -> dict:
        """A JSON-ready record: the pose (qvec w x y z, tvec), counts, status, failure reason, timings, camera."""
        return {"name": self.name, "qvec": self.pose.qvec.tolist(), "tvec": self.pose.t.tolist(),
                "success": self.success, "status": "localized" if self.success else "failed",
                "num_keypoints": self.num_keypoints, "num_matches": self.num_matches, "num_inliers": self.num_inliers,
                "reason": self.reason, "timings": self.timings,
                "camera": None if self.camera is None else " ".join(self.camera.to_tokens()),
                "camera_source": self.camera_source}


# ------------------------------------------------------------------------------------------------ bundle


ImageInput = str | Path | bytes | np.ndarray


class Bundle:
    """A loaded map bundle: localizes photos with :meth:`localize`, from any number of threads at once.

    Made by :func:`load_bundle`. Attributes: ``path``, ``manifest`` (bundle.json), ``method``, ``map``,
    ``localizer``, ``local_extractor``, ``global_extractor``.
    """

    def __init__(self, path: Path, manifest: dict, fused_map: FusedMap, localizer: Localizer,
                 local_extractor: LocalExtractor, global_extractor: GlobalExtractor):
        self.path = path
        self.manifest = manifest
        self.method = str(manifest.get("method", ""))
        self.map = fused_map
        self.localizer = localizer
        self.local_extractor = local_extractor
        self.global_extractor = global_extractor
        # faiss' GPU indexes are not safe for concurrent searches; CPU ones are, and so is everything else here.
        self._index_lock = threading.Lock() if getattr(localizer.index, "on_gpu", False) else None

    def describe(self) -> dict:
        """A short summary (the service's /health)."""
        return {"bundle": str(self.path), "method": self.method, "points": self.map.num_points,
                "images": len(self.map.db_names), "config_hash": self.manifest.get("config_hash"),
                "local_features": self.manifest["local_features"]["tag"],
                "global_features": self.manifest["global_features"]["tag"],
                "index": self.manifest["index"]["kind"]}

    def localize(self, image: ImageInput, camera: Camera | str | None = None, name: str | None = None,
                 allow_guessed_focal: bool = False) -> LocalizationResult:
        """Localize one photo.

        Args:
            image: an image file path, the file's bytes (JPEG, PNG...), or RGB uint8 pixels (H, W, 3).
            camera: its intrinsics (a :class:`Camera` or ``"MODEL W H params..."``) for the pixels as read
                (EXIF orientation is not applied: the stored pixels, as COLMAP and hloc read them); None: from
                the file's EXIF data (not for raw pixels).
            name: the name in the result; default: the file name (``image`` for bytes and pixels).
            allow_guessed_focal: without intrinsics and without an EXIF focal length, use COLMAP's guess
                (1.2 x the longest side) instead of failing.

        Raises:
            InputError: an unreadable image, bad intrinsics, or intrinsics for another image size (one line,
                naming the image).
        """
        t_start = time.perf_counter()
        timings: dict[str, float] = {}
        if isinstance(image, (str, Path)):
            name = name or Path(image).name
            pixels, camera, source = self._read_file(Path(image), camera, allow_guessed_focal, name)
        elif isinstance(image, (bytes, bytearray, memoryview)):
            name = name or "image"
            pixels, camera, source = self._read_bytes(bytes(image), camera, allow_guessed_focal, name)
        elif isinstance(image, np.ndarray):
            name = name or "image"
            if camera is None:
                raise InputError("pixels without a file carry no EXIF data: give the camera", name)
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise InputError(f"expected RGB uint8 pixels (H, W, 3), got {image.dtype} {image.shape}", name)
            pixels, camera, source = image, self._camera(camera, name), "given"
            check_image_size(name, (pixels.shape[1], pixels.shape[0]), camera)
        else:
            raise TypeError(f"image must be a path, bytes or an RGB array, not {type(image).__name__}")
        timings["decode"] = time.perf_counter() - t_start
        result = self._localize_pixels(pixels, camera, name, timings)
        result.camera_source = source
        result.timings["total"] = time.perf_counter() - t_start
        return result

    @staticmethod
    def _camera(camera: Camera | str, where: str | Path) -> Camera:
        return camera if isinstance(camera, Camera) else parse_camera(camera, where)

    def _read_file(self, path: Path, camera: Camera | str | None, allow_guess: bool,
                   name: str) -> tuple[np.ndarray, Camera, str]:
        pixels = read_image(path)
        size = (pixels.shape[1], pixels.shape[0])
        if camera is None:
            return pixels, camera_from_exif(path, size, allow_guess), "exif"
        camera = self._camera(camera, path)
        check_image_size(path, size, camera)
        return pixels, camera, "given"

    def _read_bytes(self, data: bytes, camera: Camera | str | None, allow_guess: bool,
                    name: str) -> tuple[np.ndarray, Camera, str]:
        if camera is not None:
            camera = self._camera(camera, name)
            pixels = decode_image(data, name)
            check_image_size(name, (pixels.shape[1], pixels.shape[0]), camera)
            return pixels, camera, "given"
        # EXIF intrinsics are read from a file (pycolmap's reader): a private temporary copy, named in no error.
        fd, tmp = tempfile.mkstemp(prefix="fuseloc-query-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            try:
                return self._read_file(Path(tmp), None, allow_guess, name)
            except InputError as exc:
                raise InputError(exc.raw_message, name) from None
        finally:
            os.unlink(tmp)

    def _localize_pixels(self, pixels: np.ndarray, camera: Camera, name: str, timings: dict[str, float]) -> LocalizationResult:
        t0 = time.perf_counter()
        local = self.local_extractor(pixels)
        t1 = time.perf_counter()
        extractor = self.global_extractor
        global_desc = np.asarray(extractor.describe(pixels if extractor.uses_image else None,
                                                    local if extractor.uses_local_features else None), np.float32).reshape(-1)
        timings["local_features"] = t1 - t0
        timings["global_features"] = time.perf_counter() - t1
        captured: list[QueryMatches] = []
        if self._index_lock is None:
            pose_result = self.localizer.localize(camera, local.keypoints, local.descriptors, global_desc,
                                                  on_matches=captured.append)
        else:
            with self._index_lock:
                pose_result = self.localizer.localize(camera, local.keypoints, local.descriptors, global_desc,
                                                      on_matches=captured.append)
        matches = None
        if captured and len(captured[0].p2d):
            m = captured[0]
            p3d = np.asarray(self.map.points_xyz[m.point_index], np.float64)
            uv, front = project(camera, pose_result.pose, p3d)
            error = np.linalg.norm(uv - m.p2d, axis=1)
            inliers = front & (error < self.localizer.config.pnp.max_reproj_error) & pose_result.success
            matches = MatchDetails(m.p2d, p3d, inliers)
        return LocalizationResult(name, pose_result.pose, pose_result.success, len(local.keypoints),
                                  pose_result.num_matches, pose_result.num_inliers, pose_result.reason,
                                  {**timings, **pose_result.timings}, camera, "given", matches)


def _localizer_config(record: dict, use_gpu: bool) -> LocalizerConfig:
    """LocalizerConfig from its asdict() record (unknown keys refused: they come from another fuseloc)."""
    def build(cls: type, values: dict) -> Any:
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields {sorted(unknown)}")
        return cls(**values)

    values = dict(record)
    values["pnp"] = build(PnPConfig, values.get("pnp", {}))
    values["index"] = replace(build(IndexConfig, values.get("index", {})), use_gpu=use_gpu)
    return build(LocalizerConfig, values)


def read_manifest(path: str | Path) -> dict:
    """bundle.json of the bundle folder ``path``, checked (format, version, files present with their sizes)."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not path.is_dir():
        raise InputError("bundle folder not found" if not path.exists() else "a bundle is a folder, not a file", path)
    if not manifest_path.is_file():
        raise InputError(f"not a fuseloc bundle (no {MANIFEST})", path)
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"unreadable bundle manifest ({exc})", manifest_path) from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise InputError("not a fuseloc bundle manifest", manifest_path)
    version = manifest.get("format_version")
    if version != BUNDLE_FORMAT_VERSION:
        raise InputError(f"bundle format version {version}, this fuseloc reads {BUNDLE_FORMAT_VERSION}; export the "
                         "bundle again", manifest_path)
    for file_name, size in manifest.get("files", {}).items():
        file_path = path / file_name
        if not file_path.is_file():
            raise InputError("bundle file missing", file_path)
        if file_path.stat().st_size != size:
            raise InputError(f"bundle file has {file_path.stat().st_size} bytes, the manifest says {size} "
                             "(truncated or replaced)", file_path)
    return manifest


def load_bundle(path: str | Path, device: str | None = "cpu", use_gpu: bool = False) -> Bundle:
    """Load a map bundle (see the module docstring) for :meth:`Bundle.localize`.

    Args:
        path: the bundle folder written by ``evaluate.py --export_bundle``.
        device: where network extractors run (``cpu``, ``cuda``...; None: CUDA when available). The fusion
            runs on the CPU.
        use_gpu: put the search index on the GPU (faiss-gpu).

    Raises:
        InputError: not a bundle, another format version, a missing or damaged file, a missing weight file.
    """
    path = Path(path)
    t0 = time.perf_counter()
    manifest = read_manifest(path)
    try:
        localizer_config = _localizer_config(manifest["localizer"], use_gpu)
        local_spec = ExtractorSpec(**{k: v for k, v in manifest["local_features"].items()})
        global_record = dict(manifest["global_features"])
        state_file = global_record.pop("state_file")
        global_spec = ExtractorSpec(**global_record)
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"bundle manifest is incomplete or from another fuseloc ({exc})", path / MANIFEST) from None
    fused_map = FusedMap.load(path / MAP_FILE)
    local_extractor = instantiate_extractor(local_spec, device, path / MANIFEST)
    global_extractor = instantiate_extractor(global_spec, device, path / MANIFEST)
    if state_file:
        try:
            with np.load(path / state_file, allow_pickle=False) as data:
                global_extractor.load_state({k: data[k] for k in data.files})
        except (OSError, ValueError, KeyError) as exc:
            raise InputError(f"cannot read the global extractor's state ({exc})", path / state_file) from None
    for extractor in (local_extractor, global_extractor):
        if isinstance(extractor, TorchExtractor):
            _ = extractor.net  # build and load the network now, not in the first (possibly concurrent) request
    num_points, dim = fused_map.descriptors.shape
    index = None
    if manifest["index"].get("file"):
        index_path = path / manifest["index"]["file"]
        try:
            raw = MapIndex.read_checked(index_path, localizer_config.index, num_points, dim)
        except (RuntimeError, ValueError) as exc:
            raise InputError(f"damaged or foreign search index ({str(exc).splitlines()[0]})", index_path) from None
        index = MapIndex.from_faiss(raw, localizer_config.index, num_points, dim)
    localizer = Localizer(fused_map, localizer_config, index=index)  # the map's own fusion, on the CPU
    logger.info("loaded bundle %s (%s: %d points, %s index) in %.2f s", path, manifest.get("method", ""), num_points,
                manifest["index"]["kind"], time.perf_counter() - t0)
    return Bundle(path, manifest, fused_map, localizer, local_extractor, global_extractor)


# -------------------------------------------------------------------------------------------- drawing


def draw_matches(pixels: np.ndarray, result: LocalizationResult) -> np.ndarray:
    """RGB uint8 copy of ``pixels`` with the result's inlier matches in green, outliers in red, and a status line."""
    import cv2

    canvas = np.ascontiguousarray(pixels.copy())
    if result.matches is not None:
        # keypoints are in COLMAP's convention (pixel centres at +0.5); OpenCV draws at integer centres
        for (x, y), inlier in zip(result.matches.p2d - 0.5, result.matches.inliers, strict=True):
            colour = (0, 200, 0) if inlier else (230, 30, 30)
            cv2.circle(canvas, (int(round(x)), int(round(y))), 3 if inlier else 2, colour, -1, cv2.LINE_AA)
    status = (f"{result.name}: {'localized' if result.success else 'FAILED'} "
              f"{result.num_inliers}/{result.num_matches} inliers")
    cv2.putText(canvas, status, (5, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(canvas, status, (5, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return canvas
