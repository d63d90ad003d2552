"""The embedded synthetic town (generated on first use into the cache) as a dataset reader."""

from __future__ import annotations

from pathlib import Path

from fuseloc.data.readers.base import DatasetReader, LocalizationData
from fuseloc.data.readers.generic import GenericDataset


class EmbeddedTown(DatasetReader):
    """The default demo scene: a small rendered town with repeated facades, day and night queries.

    Args:
        root: where to write the generated scene; default: the fuseloc cache, keyed by the generator config.
        seed: generator seed.
    """

    def __init__(self, root: str | Path | None = None, seed: int = 0):
        self.root = None if root is None else Path(root)
        self.seed = seed

    def load(self) -> LocalizationData:
        from fuseloc.data.synthetic import TownConfig, default_scene_dir, generate_town

        config = TownConfig(seed=self.seed)
        root = generate_town(self.root or default_scene_dir(config), config)
        return GenericDataset(root, name="town").load()
