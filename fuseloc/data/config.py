"""The ``data`` section: which dataset, which features, where caches and outputs go.

evaluate.py takes it as ``data`` (``--data.reader``, ``--data.local_features``...), and train.py's
:class:`~fuseloc.data.datamodule.FuseLocDataModule` takes the same settings under the same keys, so one YAML
snippet (``configs/data/*.yaml``, ``configs/features/*.yaml``) configures both tools, and a checkpoint trained
with a snippet applies to an evaluation with it (same features, same global descriptor, same caches).

The reader and extractors default to None (:meth:`DataConfig.resolved` makes the objects), not to an instance
(``lazy_instance``): when a config names another class, jsonargparse keeps every init_arg of the previous value
that the new class also accepts, default ones included, so a ``Sift`` default would hand ``max_keypoints: 2048``
to ``--data.local_features D2Net`` (whose own default is every keypoint) and a ``Vlad`` default
``num_clusters: 32`` to MegaLoc (64). FuseLocDataModule resolves its None defaults the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from fuseloc.data.extractors import GlobalExtractor, LocalExtractor, Sift, Vlad
from fuseloc.data.readers.base import DatasetReader
from fuseloc.data.readers.town import TownReader
from fuseloc.data.triangulate import TriangulationConfig


@dataclass(frozen=True)
class DataConfig:
    """What is localized, with which features, and where caches and outputs go.

    Attributes:
        reader: the dataset reader; None: the embedded synthetic town.
        local_features: local feature extractor; None: RootSIFT (``Sift()``).
        global_features: global descriptor (any ``GlobalExtractor``, e.g. ``fuseloc.data.extractors.NetVLAD``);
            None: VLAD (``Vlad()``) trained on the database.
        local_features_path: an existing local feature file (hloc's ``feats-*.h5`` or ours) used instead of
            extracting; it must hold every database and query image.
        global_features_path: an existing global feature file (hloc's ``global-feats-*.h5`` or ours).
        triangulation: how a map is triangulated when the reference model has no points.
        output_dir: root of outputs and caches (``<output_dir>/<benchmark>/cache``, shared by both tools).
    """

    reader: DatasetReader | None = None
    local_features: LocalExtractor | None = None
    global_features: GlobalExtractor | None = None
    local_features_path: Path | None = None
    global_features_path: Path | None = None
    triangulation: TriangulationConfig = field(default_factory=TriangulationConfig)
    output_dir: Path = Path("outputs")

    def resolved(self) -> DataConfig:
        """This configuration with the None defaults replaced by their objects (what the runs use)."""
        return replace(self, reader=self.reader if self.reader is not None else TownReader(),
                       local_features=self.local_features if self.local_features is not None else Sift(),
                       global_features=self.global_features if self.global_features is not None else Vlad(),
                       output_dir=Path(self.output_dir))
