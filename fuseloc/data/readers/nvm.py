"""The NVM format (RobotCar ``all.nvm``, Cambridge ``reconstruction.nvm``): a vectorised reader.

Conventions (DATASETS.md §2): the camera line is ``name focal qw qx qy qz Cx Cy Cz radial 0`` with the
world-to-camera rotation and the camera *centre*; a point line is ``X Y Z R G B n (img feat x y)*n``. Only the
first model of a file is read.

Measurements (``x y``) come in two conventions, depending on the program that wrote the file:
VisualSFM writes pixels relative to the image centre (Cambridge), COLMAP's NVM exporter writes absolute pixels
from the top-left corner (RobotCar Seasons' ``all.nvm``). :meth:`NvmModel.to_scene` decides per file by
reprojection (:func:`fit_measurements`) unless told which one it is.

Name fix-ups (``./`` prefixes, extensions) belong to the dataset readers, which pass the real image sizes to
:meth:`NvmModel.to_scene`.

Parsing: the camera block is read line by line; the point block (millions of lines for RobotCar) is parsed in
byte blocks with numpy (:func:`numpy.fromstring` for the numbers, whitespace and newline positions for the
line structure). A block that numpy cannot parse cleanly (a comment, a non-numeric token) is parsed again line
by line, which gives the same result or an error naming the file and line.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np

from fuseloc.data.readers.nvm_measurements import MeasurementCheck, fit_measurements
from fuseloc.data.scene import Scene
from fuseloc.errors import InputError
from fuseloc.io import iter_lines
from fuseloc.types import Camera, qvec_to_rotmat

logger = logging.getLogger(__name__)

MeasurementConvention = Literal["auto", "absolute", "centered"]
MEASUREMENT_CONVENTIONS = ("auto", "absolute", "centered")
POINT_LINE_FORMAT = "'X Y Z R G B n_meas (img feat x y)*n_meas'"

#: Bytes of the point block parsed at once by the vectorised reader.
BLOCK_BYTES = 8 << 20
_WHITESPACE = np.zeros(256, bool)
_WHITESPACE[[9, 10, 11, 12, 13, 32]] = True


@dataclass
class NvmModel:
    """The first model of an NVM file as flat arrays.

    Attributes:
        names: N camera-line file names, verbatim.
        focals: (N,) focal lengths in pixels.
        qvecs: (N, 4) world-to-camera rotations (w, x, y, z).
        centers: (N, 3) camera centres in world coordinates.
        radial: (N,) radial distortion coefficients (VisualSFM: pixel-radius units).
        points_xyz: (P, 3) point positions.
        obs_image: (M,) int32 camera index of each measurement.
        obs_point: (M,) int32 point index.
        obs_keypoint: (M,) int32 feature (keypoint) index in its image.
        obs_xy: (M, 2) float32 measurements as written in the file (absolute or centre-relative pixels).
        path: the file the model was read from (named in errors), if any.
    """

    names: list[str]
    focals: np.ndarray
    qvecs: np.ndarray
    centers: np.ndarray
    radial: np.ndarray
    points_xyz: np.ndarray
    obs_image: np.ndarray
    obs_point: np.ndarray
    obs_keypoint: np.ndarray
    obs_xy: np.ndarray
    path: Path | None = None

    @property
    def num_cameras(self) -> int:
        return len(self.names)

    def R_cam_from_world(self) -> np.ndarray:
        """(N, 3, 3) world-to-camera rotations."""
        return np.stack([qvec_to_rotmat(q) for q in self.qvecs]).reshape(-1, 3, 3)

    def t_cam_from_world(self, R_cam_from_world: np.ndarray | None = None) -> np.ndarray:
        """(N, 3) world-to-camera translations ``t = -R C`` (``R_cam_from_world``: :meth:`R_cam_from_world`, if
        already at hand)."""
        R = self.R_cam_from_world() if R_cam_from_world is None else R_cam_from_world
        return -np.einsum("nij,nj->ni", R, self.centers)

    def to_scene(self, names: list[str], cameras: list[Camera], keep: np.ndarray | None = None,
                 image_root: Path | None = None, measurements: MeasurementConvention = "auto",
                 check: MeasurementCheck = MeasurementCheck()) -> Scene:  # noqa: B008 (frozen)
        """A scene of the cameras in ``keep`` (default all), renamed to ``names`` and given ``cameras``.

        ``measurements`` says how the file's ``x y`` are to be read: ``absolute`` (COLMAP's exporter: pixels
        from the top-left corner, kept as they are), ``centered`` (VisualSFM: relative to the image centre,
        moved to COLMAP pixels by adding (W/2, H/2), the principal point VisualSFM assumes) or ``auto``
        (decided by reprojection over the whole file, see :func:`fit_measurements`; an InputError naming the
        file when neither fits). The decision is logged.
        """
        if len(names) != self.num_cameras or len(cameras) != self.num_cameras:
            raise ValueError("names and cameras must have one entry per NVM camera")
        if measurements not in MEASUREMENT_CONVENTIONS:
            raise InputError(f"measurements must be one of {', '.join(MEASUREMENT_CONVENTIONS)}, got {measurements!r}",
                             self.path)
        keep = np.ones(self.num_cameras, bool) if keep is None else np.asarray(keep, bool)
        sizes = np.array([[c.width, c.height] for c in cameras], np.float64).reshape(-1, 2)
        R_cam_from_world = self.R_cam_from_world()
        t_cam_from_world = self.t_cam_from_world(R_cam_from_world).reshape(-1, 3)
        convention = self._convention(measurements, sizes, R_cam_from_world, t_cam_from_world, check)
        obs_xy = self.obs_xy
        if convention == "centered" and len(self.obs_image):
            obs_xy = obs_xy + (sizes / 2.0).astype(np.float32)[self.obs_image]
        full = Scene(
            image_names=list(names),
            image_cameras=list(cameras),
            R_cam_from_world=R_cam_from_world,
            t_cam_from_world=t_cam_from_world,
            points_xyz=self.points_xyz,
            obs_image=self.obs_image,
            obs_point=self.obs_point,
            obs_xy=np.asarray(obs_xy, np.float32),
            obs_keypoint=self.obs_keypoint,
            image_root=image_root,
        )
        return full if keep.all() else full.subset_images(keep)

    def _convention(self, measurements: MeasurementConvention, sizes: np.ndarray, R_cam_from_world: np.ndarray,
                    t_cam_from_world: np.ndarray, check: MeasurementCheck) -> str:
        where = self.path or "NVM model"
        if len(self.obs_image) == 0:
            return "absolute"  # nothing to convert
        fit = fit_measurements(self, sizes, check, R_cam_from_world, t_cam_from_world)
        if measurements != "auto":
            if fit.convention is not None and fit.convention != measurements:
                logger.warning("%s: measurements read as %s as configured, but they look %s (%s)", where, measurements,
                               fit.convention, fit.describe())
            else:
                logger.info("%s: measurements read as %s as configured", where, measurements)
            return measurements
        if fit.convention is None:
            if fit.samples < check.min_samples:
                reason = (f"only {fit.samples} of {fit.sampled} sampled measurements are in front of their cameras "
                          f"(need {check.min_samples})")
            else:
                reason = (f"{fit.describe()}; the right one must be below {100 * check.tolerance:g}% and "
                          f"{check.separation:g}x smaller than the other; check the image sizes and the file")
            raise InputError(f"cannot tell whether NVM measurements are absolute or centre-relative pixels: {reason}; "
                             "set measurements='absolute' or 'centered' to override", self.path)
        logger.info("%s: measurements are %s pixels (%s; distortion: %s)", where,
                    "absolute" if fit.convention == "absolute" else "centre-relative", fit.describe(), fit.distortion)
        return fit.convention


# ------------------------------------------------------------------------------------------------ reading


def read_nvm(path: str | Path, method: Literal["auto", "vectorised", "lines"] = "auto") -> NvmModel:
    """Parse the first model of an NVM file; errors name the file and line.

    ``method``: ``vectorised`` parses the point block with numpy in byte blocks, ``lines`` parses it line by
    line in Python (the simple reference, about an order of magnitude slower); ``auto`` is ``vectorised``
    except for files with old-Mac CR-only line ends, which only the line reader splits correctly.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", path)
    if method not in ("auto", "vectorised", "lines"):
        raise ValueError(f"unknown NVM parse method {method!r}")
    if method == "auto":
        with open(path, "rb") as f:
            head = f.read(1 << 16)
        method = "lines" if b"\r" in head and b"\n" not in head else "vectorised"
    if method == "lines":
        return _read_lines(path)
    with open(path, "rb") as f:
        header = _BinaryLines(f, path)
        names, cam_values = _read_header(header, path)
        num_points = _point_count(header, path)
        points = _read_point_blocks(f, path, header.number, num_points, len(names))
    return _model(path, names, cam_values, points)


@dataclass
class _Points:
    """Parsed point lines: positions, measurement counts and the measurements (image, feature, x, y)."""

    xyz: np.ndarray
    counts: np.ndarray
    image: np.ndarray
    feature: np.ndarray
    xy: np.ndarray

    @staticmethod
    def concat(parts: list[_Points]) -> _Points:
        fields = {}
        for name, shape, dtype in (("xyz", (0, 3), np.float64), ("counts", (0,), np.int64), ("image", (0,), np.int32),
                                   ("feature", (0,), np.int32), ("xy", (0, 2), np.float32)):
            arrays = [getattr(p, name) for p in parts]
            fields[name] = np.concatenate(arrays) if arrays else np.zeros(shape, dtype)
        return _Points(**fields)


class _PointSink:
    """Output arrays filled block by block: exact for points, grown in place (realloc) for measurements.

    Copying each block into preallocated arrays, rather than keeping per-block arrays and concatenating them,
    avoids a second copy of everything at the end and the heap fragmentation of many block-sized allocations.
    """

    def __init__(self, num_points: int):
        self.xyz = np.empty((num_points, 3), np.float64)
        self.counts = np.empty(num_points, np.int64)
        self.image = np.empty(0, np.int32)
        self.feature = np.empty(0, np.int32)
        self.xy = np.empty((0, 2), np.float32)
        self.points = 0
        self.measurements = 0

    def add(self, block: _Points) -> None:
        p, m = len(block.xyz), len(block.image)
        if self.measurements + m > len(self.image):
            # Room for the rest of the file at this block's track lengths, and some slack.
            per_point = max(m / max(p, 1), 1.0)
            wanted = self.measurements + m + int(1.1 * per_point * (len(self.xyz) - self.points - p)) + 1024
            for name in ("image", "feature", "xy"):
                getattr(self, name).resize((wanted, *getattr(self, name).shape[1:]), refcheck=False)
        self.xyz[self.points:self.points + p] = block.xyz
        self.counts[self.points:self.points + p] = block.counts
        self.image[self.measurements:self.measurements + m] = block.image
        self.feature[self.measurements:self.measurements + m] = block.feature
        self.xy[self.measurements:self.measurements + m] = block.xy
        self.points += p
        self.measurements += m

    def result(self) -> _Points:
        for name in ("image", "feature", "xy"):
            getattr(self, name).resize((self.measurements, *getattr(self, name).shape[1:]), refcheck=False)
        return _Points(self.xyz[:self.points], self.counts[:self.points], self.image, self.feature, self.xy)


def _model(path: Path, names: list[str], cam_values: np.ndarray, points: _Points) -> NvmModel:
    num_points = len(points.xyz)
    logger.info("%s: %d cameras, %d points, %d measurements", path, len(names), num_points, len(points.image))
    return NvmModel(
        names=names,
        focals=cam_values[:, 0].copy(),
        qvecs=cam_values[:, 1:5].copy(),
        centers=cam_values[:, 5:8].copy(),
        radial=cam_values[:, 8].copy(),
        points_xyz=points.xyz,
        obs_image=points.image,
        obs_point=np.repeat(np.arange(num_points, dtype=np.int32), points.counts),
        obs_keypoint=points.feature,
        obs_xy=points.xy,
        path=path,
    )


class _BinaryLines:
    """Numbered, tokenised non-blank, non-comment lines of a binary file, leaving it positioned after the last."""

    def __init__(self, f: BinaryIO, path: Path):
        self.f = f
        self.path = path
        self.number = 0

    def __iter__(self) -> Iterator[tuple[int, list[str]]]:
        return self

    def __next__(self) -> tuple[int, list[str]]:
        while True:
            raw = self.f.readline()
            if not raw:
                raise StopIteration
            self.number += 1
            stripped = raw.decode("utf-8", errors="replace").strip()
            if stripped and not stripped.startswith("#"):
                return self.number, stripped.split()


def _read_header(lines: Iterator[tuple[int, list[str]]], path: Path) -> tuple[list[str], np.ndarray]:
    try:
        number, tokens = next(lines)
    except StopIteration:
        raise InputError("empty NVM file", path) from None
    if not tokens[0].startswith("NVM_V3"):
        raise InputError(f"not an NVM_V3 file (first line {' '.join(tokens)[:80]!r})", path, number)
    num_cameras = _count(lines, path, "camera count")
    names: list[str] = []
    numbers = np.zeros(num_cameras, np.int64)
    cam_values = np.zeros((num_cameras, 10), np.float64)
    for k in range(num_cameras):
        number, tokens = _next(lines, path, f"camera line {k + 1} of {num_cameras}")
        if len(tokens) != 11:
            raise InputError(f"camera line needs 11 fields 'name focal qw qx qy qz Cx Cy Cz radial 0', got {len(tokens)}",
                             path, number)
        try:
            cam_values[k] = [float(t) for t in tokens[1:]]
        except ValueError:
            raise InputError(f"non-numeric field in camera line of {tokens[0]!r}", path, number) from None
        names.append(tokens[0])
        numbers[k] = number
    bad = np.flatnonzero(~np.isfinite(cam_values).all(1) | (np.linalg.norm(cam_values[:, 1:5], axis=1) < 1e-8))
    if len(bad):
        raise InputError(f"invalid focal, quaternion or centre for {names[bad[0]]!r}", path, int(numbers[bad[0]]))
    return names, cam_values


def _read_lines(path: Path) -> NvmModel:
    """The line-by-line reader (text mode, universal newlines)."""
    lines = iter_lines(path)
    names, cam_values = _read_header(lines, path)
    num_points = _point_count(lines, path)
    return _model(path, names, cam_values, _parse_point_lines(lines, num_points, len(names), path, must_finish=True))


def _parse_point_lines(lines: Iterable[tuple[int, list[str]]], num_points: int, num_cameras: int, path: Path,
                       must_finish: bool) -> _Points:
    """Up to ``num_points`` point lines, one at a time (the reference semantics of the vectorised parser)."""
    xyz: list[list[float]] = []
    counts: list[int] = []
    parts: list[np.ndarray] = []
    iterator = iter(lines)
    for k in range(num_points):
        if must_finish:
            number, tokens = _next(iterator, path, f"point line {k + 1} of {num_points}")
        else:
            try:
                number, tokens = next(iterator)
            except StopIteration:
                break
        if len(tokens) < 7:
            raise InputError(f"point line needs {POINT_LINE_FORMAT}, got {len(tokens)} fields", path, number)
        try:
            values = np.array([float(t) for t in tokens], np.float64)
        except ValueError:
            raise InputError("non-numeric field in point line", path, number) from None
        n = values[6]
        if not (0 <= n < 2**31 and float(n).is_integer()):
            raise InputError(f"measurement count {tokens[6]!r} is not a non-negative integer", path, number)
        n = int(n)
        if len(tokens) != 7 + 4 * n:
            raise InputError(f"point declares {n} measurements, which needs {7 + 4 * n} fields, got {len(tokens)}", path, number)
        meas = values[7:].reshape(n, 4)
        _check_point(values[None, :3], meas, num_cameras, path, lambda _row, number=number: number)
        xyz.append(values[:3].tolist())
        counts.append(n)
        parts.append(meas)
    meas_all = np.concatenate(parts) if parts else np.zeros((0, 4))
    return _Points(np.array(xyz, np.float64).reshape(-1, 3), np.array(counts, np.int64),
                   meas_all[:, 0].astype(np.int32), meas_all[:, 1].astype(np.int32), meas_all[:, 2:4].astype(np.float32))


def _check_point(xyz: np.ndarray, meas: np.ndarray, num_cameras: int, path: Path, line_of) -> None:  # noqa: ANN001
    """Values a point line may not hold; ``line_of(kind, row)`` gives the file line of a bad row."""
    bad = np.flatnonzero(~np.isfinite(xyz).all(1))
    if len(bad):
        raise InputError("non-finite point coordinates", path, line_of(("point", int(bad[0]))))
    if not len(meas):
        return
    image, feature = meas[:, 0], meas[:, 1]
    bad = np.flatnonzero(~((image >= 0) & (image < num_cameras) & (image == np.round(image))))
    if len(bad):
        raise InputError(f"measurement image index {image[bad[0]]:g} is not an integer in 0..{num_cameras - 1}", path,
                         line_of(("meas", int(bad[0]))))
    bad = np.flatnonzero(~((feature >= 0) & (feature < 2**31) & (feature == np.round(feature))))
    if len(bad):
        raise InputError(f"measurement feature index {feature[bad[0]]:g} is not a non-negative integer", path,
                         line_of(("meas", int(bad[0]))))
    bad = np.flatnonzero(~np.isfinite(meas[:, 2:4]).all(1))
    if len(bad):
        raise InputError("non-finite measurement position", path, line_of(("meas", int(bad[0]))))


def _read_point_blocks(f: BinaryIO, path: Path, last_line: int, num_points: int, num_cameras: int) -> _Points:
    """``num_points`` point lines from the current position of ``f`` (just after line ``last_line``)."""
    sink = _PointSink(num_points)
    remaining = num_points
    leftover = b""
    while remaining > 0:
        data = f.read(BLOCK_BYTES)
        buf = leftover + data if leftover else data
        if data:
            cut = buf.rfind(b"\n")
            if cut < 0:  # a line longer than a block: read on
                leftover = buf
                continue
            block, leftover = buf[:cut + 1], buf[cut + 1:]
        else:
            block, leftover = buf, b""
            if not block.strip():
                raise InputError(f"file ends early: missing point line {num_points - remaining + 1} of {num_points}", path)
        points, lines_used = _parse_point_block(block, last_line + 1, remaining, num_cameras, path)
        sink.add(points)
        remaining -= len(points.xyz)
        del points
        last_line += lines_used
        if not data and remaining > 0:
            raise InputError(f"file ends early: missing point line {num_points - remaining + 1} of {num_points}", path)
    return sink.result()


def _parse_point_block(block: bytes, first_line: int, max_points: int, num_cameras: int, path: Path) -> tuple[_Points, int]:
    """Up to ``max_points`` point lines of ``block`` (whole lines; ``first_line`` is the number of its first).

    Returns the points and the number of lines consumed.
    """
    arr = np.frombuffer(block, np.uint8)
    newlines = np.flatnonzero(arr == 10)
    num_lines = len(newlines) + (0 if block.endswith(b"\n") else 1)
    ws = _WHITESPACE[arr]
    token_start = ~ws
    token_start[1:] &= ws[:-1]
    starts = np.flatnonzero(token_start)
    del ws, token_start
    if b"#" in block:  # comment lines: the line reader skips them (and stops after max_points point lines)
        return _slow_block(block, first_line, max_points, num_cameras, path), num_lines
    counts = np.bincount(np.searchsorted(newlines, starts), minlength=num_lines)
    cumulative = np.cumsum(counts > 0)
    if len(cumulative) and cumulative[-1] > max_points:
        num_lines = int(np.searchsorted(cumulative, max_points)) + 1
        counts = counts[:num_lines]
        block = block[:newlines[num_lines - 1] + 1]
    total = int(counts.sum())
    if total == 0:
        return _Points.concat([]), num_lines
    try:
        values = np.fromstring(block, sep=" ")
    except ValueError:
        values = None
    if values is None or len(values) != total:  # a token numpy reads differently from float(): let the line reader decide
        return _slow_block(block, first_line, max_points, num_cameras, path), num_lines
    lines = np.flatnonzero(counts)
    line_start = np.cumsum(counts) - counts
    fields, first = counts[lines], line_start[lines]

    def line_of(where: tuple[str, int]) -> int:
        kind, row = where
        point = row if kind == "point" else int(np.searchsorted(np.cumsum(n_meas), row, side="right"))
        return first_line + int(lines[point])

    short = np.flatnonzero(fields < 7)
    if len(short):
        raise InputError(f"point line needs {POINT_LINE_FORMAT}, got {fields[short[0]]} fields", path,
                         first_line + int(lines[short[0]]))
    n_raw = values[first + 6]
    bad = np.flatnonzero(~((n_raw >= 0) & (n_raw < 2**31) & (n_raw == np.round(n_raw))))
    if len(bad):
        raise InputError(f"measurement count {n_raw[bad[0]]:g} is not a non-negative integer", path,
                         first_line + int(lines[bad[0]]))
    n_meas = n_raw.astype(np.int64)
    bad = np.flatnonzero(fields != 7 + 4 * n_meas)
    if len(bad):
        n = n_meas[bad[0]]
        raise InputError(f"point declares {n} measurements, which needs {7 + 4 * n} fields, got {fields[bad[0]]}", path,
                         first_line + int(lines[bad[0]]))
    xyz = values[first[:, None] + np.arange(3)]
    column = np.arange(total) - np.repeat(line_start, counts)
    meas = values[column >= 7].reshape(-1, 4)
    del column, values
    _check_point(xyz, meas, num_cameras, path, line_of)
    return _Points(xyz, n_meas, meas[:, 0].astype(np.int32), meas[:, 1].astype(np.int32),
                   meas[:, 2:4].astype(np.float32)), num_lines


def _slow_block(block: bytes, first_line: int, max_points: int, num_cameras: int, path: Path) -> _Points:
    def lines() -> Iterator[tuple[int, list[str]]]:
        for k, raw in enumerate(block.split(b"\n")):
            stripped = raw.decode("utf-8", errors="replace").strip()
            if stripped and not stripped.startswith("#"):
                yield first_line + k, stripped.split()

    return _parse_point_lines(lines(), max_points, num_cameras, path, must_finish=False)


def _next(lines: Iterator[tuple[int, list[str]]], path: Path, what: str) -> tuple[int, list[str]]:
    try:
        return next(lines)
    except StopIteration:
        raise InputError(f"file ends early: missing {what}", path) from None


def _point_count(lines: Iterator[tuple[int, list[str]]], path: Path) -> int:
    """The point count after the cameras; a file that ends after its cameras has no points."""
    try:
        return _count(lines, path, "point count")
    except InputError as exc:
        if "missing" not in exc.raw_message:
            raise
        return 0


def _count(lines: Iterator[tuple[int, list[str]]], path: Path, what: str) -> int:
    number, tokens = _next(lines, path, what)
    try:
        value = int(tokens[0])
    except ValueError:
        raise InputError(f"expected the {what} (an integer), got {' '.join(tokens)[:80]!r}", path, number) from None
    if len(tokens) != 1 or value < 0:
        raise InputError(f"expected the {what} alone on its line, got {' '.join(tokens)[:80]!r}", path, number)
    return value
