"""The embedded synthetic town (generated on first use into the cache) as a dataset reader."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from fuseloc.data.readers.base import DatasetReader, LocalizationData
from fuseloc.data.readers.generic import GenericReader
from fuseloc.data.scene import QuerySet
from fuseloc.errors import InputError


class TownReader(DatasetReader):
    """The default demo scene: a small rendered town with repeated facades, day and night queries.

    Args:
        root: where to write the generated scene; default: the fuseloc cache, keyed by the generator config.
        seed: generator seed.
        validation_query_seed: if set, a second rendering of the same town and database with day and night
            queries seeded by this value provides the validation queries (``LocalizationData.validation``):
            validation then looks like the evaluation queries, night included, without using them.
    """

    def __init__(self, root: str | Path | None = None, seed: int = 0, validation_query_seed: int | None = None):
        self.root = None if root is None else Path(root)
        self.seed = seed
        self.validation_query_seed = validation_query_seed

    def load(self) -> LocalizationData:
        from fuseloc.data.town import TownConfig, default_scene_dir, generate_town

        config = TownConfig(seed=self.seed)
        root = generate_town(self.root or default_scene_dir(config), config)
        data = GenericReader(root, name="town").load()
        if self.validation_query_seed is None:
            return data
        if self.validation_query_seed == config.effective_query_seed:
            raise InputError(f"validation_query_seed {self.validation_query_seed} renders the evaluation queries "
                             "again; choose another seed", root)
        val_config = replace(config, query_seed=self.validation_query_seed)
        val_root = default_scene_dir(val_config) if self.root is None else self.root.with_name(
            f"{self.root.name}-valq{self.validation_query_seed}")
        # Only its queries are rendered: its database is this town's, rendered above.
        val = GenericReader(generate_town(val_root, val_config, database=False), name="town",
                            check_images=False).load().queries
        # Feature caches are keyed by image name: root the names one level up so that the validation
        # queries never share a name (and cached features) with the evaluation queries.
        prefix = Path(val.image_root).name
        validation = QuerySet([f"{prefix}/{n}" for n in val.names], val.cameras, val.gt_poses, val.conditions,
                              Path(val.image_root).parent)
        return replace(data, validation=validation)
