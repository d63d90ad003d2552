"""``evaluate.py --export_bundle PATH``: one map bundle per evaluated fused method (:mod:`fuseloc.localize.bundle`).

One method: the bundle is PATH itself; several: PATH/<method>; a multi-part dataset (CMU slices, Cambridge
scenes) adds its part: PATH/<part>[/<method>]. The hierarchical baseline has no fused map and is not exported.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from fuseloc.data.config import DataConfig
from fuseloc.data.feature_cache import open_cache_for_reading, read_state
from fuseloc.data.prepare import PreparedFeatures
from fuseloc.errors import InputError
from fuseloc.localize.bundle import export_bundle
from fuseloc.localize.fused_map import FusedMap
from fuseloc.localize.index import load_or_build_index
from fuseloc.localize.pipeline import LocalizerConfig

logger = logging.getLogger(__name__)


def check_exportable(data: DataConfig, where: Path) -> None:
    """Refuse, before any work, an export whose query-time extractors would be unknown (feature files given)."""
    if data.local_features_path is not None or data.global_features_path is not None:
        raise InputError("--export_bundle needs the extractors that describe new photos, but the features come from "
                         "files (data.local_features_path / data.global_features_path); extract them with fuseloc "
                         "instead", where)


def bundle_path(root: Path, label: str, num_methods: int, part: str | None = None) -> Path:
    """Where the bundle of method ``label`` goes (see the module docstring)."""
    path = Path(root) / part if part else Path(root)
    return path / label if num_methods > 1 else path


def export_method_bundle(path: Path, label: str, fused_map: FusedMap, data: DataConfig, localizer: LocalizerConfig,
                         features: PreparedFeatures, cache_dir: Path, benchmark: str) -> Path:
    """Write the bundle of one evaluated method: its fused map, the index the evaluation searched (loaded from
    the run's cache), the extractors of ``data`` and the global extractor's fitted state as stored with the
    map's global features."""
    check_exportable(data, path)
    cpu = replace(localizer, index=replace(localizer.index, use_gpu=False))
    index = None
    if cpu.index.resolved_kind(fused_map.num_points) != "flat":
        index = load_or_build_index(fused_map.descriptors, cpu.index, cache_dir, digest=fused_map.descriptor_digest())
    state: dict = {}
    if data.global_features.needs_fit:
        handle = open_cache_for_reading(features.cache.global_path)
        try:
            state = read_state(handle)
        finally:
            handle.close()
    source = {"benchmark": benchmark, "local_tag": features.local_tag, "global_tag": features.global_tag,
              "map_config": fused_map.config}
    return export_bundle(path, fused_map, cpu, data.local_features, data.global_features, state or None, index,
                         label, source)
