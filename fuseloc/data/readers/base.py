"""What every dataset reader returns: the scene, the queries and the benchmark's rules, as data."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal

from fuseloc.data.scene import QuerySet, Scene
from fuseloc.errors import InputError

logger = logging.getLogger(__name__)

#: visuallocalization.net thresholds: (metres, degrees).
STANDARD_THRESHOLDS: tuple[tuple[float, float], ...] = ((0.25, 2.0), (0.5, 5.0), (5.0, 10.0))


@dataclass(frozen=True)
class BenchmarkSpec:
    """How a benchmark is scored and submitted.

    Attributes:
        name: short benchmark name used in output paths and metric keys.
        thresholds: (translation m, rotation deg) pairs for recall.
        splits: reported split -> the query conditions it groups; empty means one split per condition.
        submission_names: how a query name becomes a submission name: ``relative`` keeps the relative path,
            ``basename`` keeps the file name, ``parent_basename`` keeps ``parent/file``.
        submission_extension: replace the extension in submission names (e.g. ".jpg"), or None to keep it.
        report: ``recall`` tables (visuallocalization.net) or ``median`` errors (Cambridge).
    """

    name: str
    thresholds: tuple[tuple[float, float], ...] = STANDARD_THRESHOLDS
    splits: dict[str, tuple[str, ...]] = field(default_factory=dict)
    submission_names: Literal["relative", "basename", "parent_basename"] = "relative"
    submission_extension: str | None = None
    report: Literal["recall", "median"] = "recall"

    def __post_init__(self) -> None:
        # The name is a folder under the output root: ".", ".." or a path would put outputs (and an overwrite)
        # on the output root itself or outside it.
        if self.name in ("", ".", "..") or "/" in self.name or "\\" in self.name:
            raise InputError(f"benchmark name {self.name!r} must be a plain folder name (it names the output folder)")

    def submission_name(self, query_name: str) -> str:
        path = PurePosixPath(query_name)
        if self.submission_names == "basename":
            path = PurePosixPath(path.name)
        elif self.submission_names == "parent_basename":
            path = PurePosixPath(path.parent.name) / path.name
        if self.submission_extension is not None:
            path = path.with_suffix(self.submission_extension)
        return str(path)

    def split_of(self, condition: str) -> str:
        for split, conditions in self.splits.items():
            if condition in conditions:
                return split
        return condition


@dataclass
class LocalizationData:
    """A loaded dataset: reference scene, queries and benchmark spec.

    Attributes:
        scene: the reference reconstruction; may have no points when the map is to be triangulated.
        queries: query images with intrinsics and (optional) ground truth.
        spec: scoring and submission rules.
        root: dataset root, used for cache keys and messages.
        validation: queries with ground truth for validation during training (e.g. RobotCar training
            queries when the test list is localized); None lets the DataModule hold out database images
            instead. Never the evaluation queries: checkpoints are selected on validation, so a validation
            query that is also in ``queries`` is dropped here (with a warning), and an emptied set becomes None.
        part: name of this part when a dataset has several independent maps (``slice2``, ``ShopFacade``);
            None for single-map datasets.
        training_queries: queries with public ground truth that training may learn from (cross-condition
            supervision: their keypoints are tied to map points by projection with the ground-truth pose), e.g.
            part of RobotCar's training queries; disjoint from ``validation`` and, like it, never an evaluation
            query (dropped here with a warning).
    """

    scene: Scene
    queries: QuerySet
    spec: BenchmarkSpec
    root: Path
    validation: QuerySet | None = None
    part: str | None = None
    training_queries: QuerySet | None = None

    def __post_init__(self) -> None:
        also_database = sorted(set(self.queries.names) & set(self.scene.image_names if self.scene is not None else ()))
        if also_database:
            # the map holds the query's own observations: its pose is recalled, not estimated
            logger.warning("%s%s: %d of %d queries are also database images (e.g. %r); their poses are not a test "
                           "of localization", self.spec.name, f"/{self.part}" if self.part else "", len(also_database),
                           len(self.queries), also_database[0])
        self.validation = self._without_evaluated(self.validation, "validation", " (validation falls back to "
                                                  "held-out database images)")
        self.training_queries = self._without_evaluated(self.training_queries, "training", "")
        if self.validation is not None and self.training_queries is not None:
            shared = set(self.validation.names) & set(self.training_queries.names)
            if shared:
                raise InputError(f"{len(shared)} queries are both training and validation queries (e.g. "
                                 f"{sorted(shared)[0]!r})", self.root)

    def _without_evaluated(self, queries: QuerySet | None, what: str, fallback: str) -> QuerySet | None:
        """``queries`` without the evaluation queries (warning with the counts); None when none is left."""
        if queries is None:
            return None
        evaluated = set(self.queries.names)
        keep = [i for i, name in enumerate(queries.names) if name not in evaluated]
        if len(keep) == len(queries):
            return queries
        logger.warning("%s%s: %d of %d %s queries are also evaluation queries; they are not used for %s%s",
                       self.spec.name, f"/{self.part}" if self.part else "", len(queries) - len(keep), len(queries),
                       what, what, fallback if not keep else "")
        return queries.subset(keep) if keep else None


def split_ground_truth_queries(queries: QuerySet | None, train_share: float) -> tuple[QuerySet | None, QuerySet | None]:
    """(training, validation) parts of a reader's non-test ground-truth queries.

    Per condition, the queries in name order (for sequences: time order) are cut once: the first ``train_share``
    train, the rest validate. One cut, not interleaving, so that neighbouring frames of one sequence (nearly the
    same image) do not land on both sides. ``train_share`` 0 keeps all for validation, 1 all for training.
    """
    if not 0.0 <= train_share <= 1.0:
        raise InputError(f"train_query_share must be in [0, 1], got {train_share}")
    if queries is None:
        return None, None
    train, val = [], []
    for condition in sorted(set(queries.conditions)):
        rows = sorted((i for i, c in enumerate(queries.conditions) if c == condition), key=lambda i: queries.names[i])
        cut = int(round(train_share * len(rows)))
        train += rows[:cut]
        val += rows[cut:]
    return (queries.subset(sorted(train)) if train else None), (queries.subset(sorted(val)) if val else None)


class DatasetReader:
    """Base class of dataset readers: constructor arguments say where the data is, ``load`` reads it."""

    def load(self) -> LocalizationData:
        raise NotImplementedError

    def load_parts(self) -> list[LocalizationData]:
        """The dataset as independent maps (e.g. CMU slices, Cambridge scenes), each with its own ``part``
        name; evaluation localizes each against its own map and merges the submissions. Default: one part."""
        return [self.load()]


class PreloadedReader(DatasetReader):
    """A reader that hands back data already loaded (e.g. one part of a multi-part dataset)."""

    def __init__(self, data: LocalizationData):
        self.data = data

    def load(self) -> LocalizationData:
        return self.data


def resolve_root(root: str | Path | None, default_name: str) -> Path:
    """The dataset root: ``root`` with environment variables expanded, or ``$FUSELOC_DATA/<default_name>``.

    Configs can then say ``root: ${FUSELOC_DATA}/aachen_v1.1`` (jsonargparse keeps the string as is) or omit
    the root entirely; an unset variable is an error rather than a path with a literal ``$`` in it.
    """
    if root is None:
        base = os.environ.get("FUSELOC_DATA")
        if not base:
            raise InputError(f"no dataset root given and FUSELOC_DATA is not set (expected $FUSELOC_DATA/{default_name})")
        return Path(base) / default_name
    expanded = os.path.expanduser(os.path.expandvars(str(root)))
    if "$" in expanded:
        raise InputError(f"dataset root {str(root)!r} uses an environment variable that is not set")
    return Path(expanded)


def check_images_exist(image_root: Path, names: list[str], source: Path, what: str) -> None:
    """Fail on the first listed image missing under ``image_root``, naming the file that listed it."""
    for name in names:
        if not (image_root / name).is_file():
            raise InputError(f"{what} image {name!r} not found under {image_root}", source)
