"""R2D2 (Revaud et al., NeurIPS 2019): full-resolution 128-D descriptors with reliability and repeatability maps.

The network is the release's ``Quad_L2Net_ConfCFS``: an L2-Net-like stack of 3x3 convolutions where strides
are replaced by growing dilations (so every map keeps the input resolution), the final 8x8 convolution
replaced by three 2x2 ones, batch norms without affine parameters, then two 1x1 heads on the squared
descriptors: reliability (2 logits, softmax) and repeatability (1 logit, x -> softplus(x) / (1 + softplus(x))).
Parameter names follow the release checkpoint ``r2d2_WASF_N16.pt`` (``{"net": "Quad_L2Net_ConfCFS()",
"state_dict": {"module.ops.<i>.weight", ..., "module.clf.weight", "module.sal.weight"}}``), ops indexed in
creation order (conv, bn, relu per block); checked against the real file. Input normalisation: ImageNet
RGB mean/std on [0, 1] images, as the release's ``norm_RGB``.

Detection follows the release's ``extract_multiscale`` (also what hloc runs):

* pyramid: scale ``s`` starts at 1 and is divided by ``scale_factor`` (2^0.25) after every level; a level is
  extracted while ``s >= max(min_scale, min_size / max(H, W))`` and only if ``s <= min(max_scale, max_size /
  max(H, W))`` (both with the release's 0.001 slack). Level k has size ``(round(H s), round(W s))`` and is
  made by bilinear resampling (``align_corners=False``, no antialiasing) *of the previous level*, not of the
  original, as the release does; the exact sizes and chained resampling matter for keypoint agreement.
* per level: 3x3 maxima of repeatability (max-pool, -inf padding) with repeatability and reliability both
  ``>=`` their thresholds (0.7); score = reliability x repeatability; the descriptor is the L2-normalised
  dense descriptor at the integer keypoint pixel (no interpolation).
* all levels pooled, then the top ``max_keypoints`` (5000) by score.

Coordinates: the release maps level pixel ``x`` to ``x * W / w_level`` (0-based pixel index, no half-pixel
shift). That is biased towards the top-left by ``0.5 (W / w_level - 1)`` pixels (up to 1.5 px at scale 1/4);
fuseloc maps the level pixel's centre exactly, ``(x + 0.5) W / w_level`` in COLMAP's convention, which is
the release's position plus ``0.5 W / w_level``. ``benchmarks/check_reference_features.py`` compares with
the release after this per-scale shift.

Images larger than ``resize_max`` are first shrunk to it (hloc's preprocessing, area filter), then the
pyramid runs on the shrunk image; ``resize_max=0`` keeps the original and reproduces the release exactly
(its pyramid then skips levels above ``max_size``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fuseloc.data.extractors.base import Detections, ImageNetNormalize, TorchLocalExtractor
from fuseloc.data.extractors.weights import load_into, load_state_dict, resolve_weights
from fuseloc.errors import InputError

logger = logging.getLogger(__name__)

#: The release's scale-to-"size" convention: a keypoint found at scale s has size 32 / s.
PATCH_SIZE = 32.0
#: The release's tolerance on scale comparisons.
_SLACK = 0.001


@dataclass
class R2D2Maps:
    """Dense outputs for a batch.

    Attributes:
        descriptors: (B, D, H, W), L2-normalised along D.
        reliability: (B, 1, H, W) in [0, 1].
        repeatability: (B, 1, H, W) in [0, 1].
    """

    descriptors: torch.Tensor
    reliability: torch.Tensor
    repeatability: torch.Tensor


@dataclass(frozen=True)
class PyramidLevel:
    """One level of the release's image pyramid.

    Attributes:
        height: level height in pixels.
        width: level width in pixels.
        scale: the release's running scale factor ``s`` (1, 1/f, 1/f^2, ...), as a Python float.
        extract: whether keypoints are extracted at this level (levels above ``max_size`` are only resampled).
    """

    height: int
    width: int
    scale: float
    extract: bool


def pyramid_levels(height: int, width: int, scale_factor: float = 2**0.25, min_scale: float = 0.0,
                   max_scale: float = 1.0, min_size: int = 256, max_size: int = 1024) -> list[PyramidLevel]:
    """The levels the release's ``extract_multiscale`` visits for an image of ``height`` x ``width``, in order.

    Sizes are ``round(H s)`` with Python's rounding of the float64 running scale, exactly as the release, so
    ties such as 683 / 2 = 341.5 resolve the same way. The list ends at the last extracted level.
    """
    longest = max(height, width)
    low = max(min_scale, min_size / longest)
    high = min(max_scale, max_size / longest)
    levels: list[PyramidLevel] = []
    s, h, w = 1.0, height, width
    while s + _SLACK >= low:
        levels.append(PyramidLevel(h, w, s, s - _SLACK <= high))
        s /= scale_factor
        h, w = round(height * s), round(width * s)
    while levels and not levels[-1].extract:
        levels.pop()
    return levels


class QuadL2NetConfCFS(nn.Module):
    """(B, 3, H, W) RGB in [0, 1] -> :class:`R2D2Maps` at the input resolution.

    Args:
        dim: descriptor dimension (release: 128).
        mchan: channel multiplier of the trunk (release: 4, i.e. 32-64-128 channels).
    """

    def __init__(self, dim: int = 128, mchan: int = 4):
        super().__init__()
        self.normalize = ImageNetNormalize()
        self.ops = nn.ModuleList()
        self._channels, self._dilation = 3, 1
        for out, stride in ((8, 1), (8, 1), (16, 2), (16, 1), (32, 2), (32, 1)):
            self._add(out * mchan, 3, stride, bn=True, relu=True)
        # the release's "relu22=False": no ReLU after the 2x2 convolutions
        self._add(32 * mchan, 2, 2, bn=True, relu=False)
        self._add(32 * mchan, 2, 2, bn=True, relu=False)
        self._add(dim, 2, 2, bn=False, relu=False)
        self.clf = nn.Conv2d(dim, 2, kernel_size=1)
        self.sal = nn.Conv2d(dim, 1, kernel_size=1)

    def _add(self, out: int, k: int, stride: int, bn: bool, relu: bool) -> None:
        # a stride becomes a dilation of every later layer, so resolution never drops
        d = self._dilation
        self.ops.append(nn.Conv2d(self._channels, out, k, padding=(k - 1) * d // 2, dilation=d))
        self._dilation *= stride
        if bn:
            self.ops.append(nn.BatchNorm2d(out, affine=False))
        if relu:
            self.ops.append(nn.ReLU(inplace=True))
        self._channels = out

    def forward(self, x: torch.Tensor) -> R2D2Maps:  # type: ignore[override]
        x = self.normalize(x)
        for op in self.ops:
            x = op(x)
        squared = x * x
        reliability = self.clf(squared).softmax(1)[:, 1:2]
        soft = F.softplus(self.sal(squared))
        return R2D2Maps(F.normalize(x, dim=1), reliability, soft / (1 + soft))


@dataclass
class ScaledDetections(Detections):
    """:class:`Detections` that also carry the release's keypoint size ``32 / s`` per keypoint (N,)."""

    sizes: torch.Tensor


def detect_level(maps: R2D2Maps, reliability_threshold: float, repeatability_threshold: float) -> list[Detections]:
    """Per image of a batch: 3x3 repeatability maxima above both thresholds, at integer pixels of this level.

    Keypoints are (x, y) pixel indices of the level; descriptors are read at those pixels.
    """
    rep, rel = maps.repeatability[:, 0], maps.reliability[:, 0]
    # max_pool2d pads with -inf, like the release's MaxPool2d(3, 1, 1)
    is_max = rep == F.max_pool2d(rep[:, None], 3, stride=1, padding=1)[:, 0]
    keep = is_max & (rep >= repeatability_threshold) & (rel >= reliability_threshold)
    out = []
    for k in range(rep.shape[0]):
        ys, xs = torch.nonzero(keep[k], as_tuple=True)
        scores = rel[k, ys, xs] * rep[k, ys, xs]
        kp = torch.stack([xs, ys], 1).to(rep.dtype)
        out.append(Detections(kp, maps.descriptors[k, :, ys, xs].T, scores))
    return out


class R2D2(TorchLocalExtractor):
    """R2D2 keypoints and 128-D descriptors, multi-scale by default (the release's and hloc's extraction).

    Args:
        weights: path of ``r2d2_WASF_N16.pt``; default: the torch hub checkpoint directory.
        max_keypoints: top-k by reliability x repeatability over all scales (release: 5000; 0 = all).
        resize_max: shrink the image so its longest side is at most this before the pyramid (hloc: 1024;
            0 = keep, as the release).
        scale_factor: ratio between pyramid levels (release: 2^0.25).
        min_scale: smallest scale factor extracted (release: 0).
        max_scale: largest scale factor extracted, at most 1 (release: 1). ``min_scale = max_scale = 1``
            is single-scale extraction.
        min_size: no level whose longest side is below this many pixels (release: 256).
        max_size: no level whose longest side is above this many pixels (release: 1024).
        reliability_threshold: minimum reliability (release: 0.7).
        repeatability_threshold: minimum repeatability (release: 0.7).
        batch_size: images per forward pass (same-size images share every pyramid level).
        device: default CUDA when available.
    """

    name = "r2d2"

    def __init__(self, weights: str | None = None, max_keypoints: int = 5000, resize_max: int = 1024,
                 scale_factor: float = 2**0.25, min_scale: float = 0.0, max_scale: float = 1.0, min_size: int = 256,
                 max_size: int = 1024, reliability_threshold: float = 0.7, repeatability_threshold: float = 0.7,
                 batch_size: int = 2, device: str | None = None):
        super().__init__(max_keypoints, resize_max, batch_size, device)
        if not scale_factor > 1:
            raise InputError(f"R2D2 scale_factor must be > 1, got {scale_factor}")
        if not 0 <= min_scale <= max_scale <= 1:
            raise InputError(f"R2D2 needs 0 <= min_scale <= max_scale <= 1, got {min_scale} and {max_scale}")
        if not 0 < min_size <= max_size:
            raise InputError(f"R2D2 needs 0 < min_size <= max_size, got {min_size} and {max_size}")
        self.weights = weights
        self.scale_factor = scale_factor
        self.min_scale = min_scale
        self.max_scale = max_scale
        self.min_size = min_size
        self.max_size = max_size
        self.reliability_threshold = reliability_threshold
        self.repeatability_threshold = repeatability_threshold
        self._weights_path = resolve_weights(weights, "r2d2_WASF_N16.pt", "R2D2", "github.com/naver/r2d2")

    @property
    def dim(self) -> int:
        return 128

    def _extra_config(self) -> dict:
        return {"weights": self.weights, "scale_factor": self.scale_factor, "min_scale": self.min_scale,
                "max_scale": self.max_scale, "min_size": self.min_size, "max_size": self.max_size,
                "reliability_threshold": self.reliability_threshold,
                "repeatability_threshold": self.repeatability_threshold}

    def _tag_extra(self) -> list[str]:
        if self.min_scale >= self.max_scale:
            return [f"ss{self.max_scale:g}"]
        extra = [f"ms{self.min_size}-{self.max_size}"]
        if self.scale_factor != 2**0.25:
            extra.append(f"f{self.scale_factor:.4g}")
        if (self.min_scale, self.max_scale) != (0.0, 1.0):
            extra.append(f"s{self.min_scale:g}-{self.max_scale:g}")
        return extra

    def _build(self) -> torch.nn.Module:
        net = QuadL2NetConfCFS()
        load_into(net, load_state_dict(self._weights_path, "R2D2"), self._weights_path, "R2D2", strip=("module.",))
        return net

    def levels(self, height: int, width: int) -> list[PyramidLevel]:
        """The pyramid this extractor runs on a (resized) image of ``height`` x ``width``."""
        return pyramid_levels(height, width, self.scale_factor, self.min_scale, self.max_scale, self.min_size,
                              self.max_size)

    def _detect(self, net: torch.nn.Module, batch: torch.Tensor) -> list[Detections]:
        height, width = batch.shape[-2:]
        per_image: list[list[ScaledDetections]] = [[] for _ in range(len(batch))]
        image = batch
        levels = self.levels(height, width)
        if not levels:
            logger.warning("R2D2: a %dx%d image has no pyramid level between min_size %d and max_size %d px: "
                           "no keypoints", width, height, self.min_size, self.max_size)
        for level in levels:
            if image.shape[-2:] != (level.height, level.width):
                # chained: each level is resampled from the previous one, as the release does
                image = F.interpolate(image, (level.height, level.width), mode="bilinear", align_corners=False)
            if not level.extract:
                continue
            maps: R2D2Maps = net(image)
            sx, sy = width / level.width, height / level.height
            for k, det in enumerate(detect_level(maps, self.reliability_threshold, self.repeatability_threshold)):
                # pixel centre of the level -> hloc convention (top-left pixel centre at 0) in the batch image
                kp = torch.stack([(det.keypoints[:, 0] + 0.5) * sx - 0.5, (det.keypoints[:, 1] + 0.5) * sy - 0.5], 1)
                sizes = torch.full_like(det.scores, PATCH_SIZE / level.scale)
                per_image[k].append(ScaledDetections(kp, det.descriptors, det.scores, sizes))
        out: list[Detections] = []
        for dets in per_image:
            if not dets:
                out.append(ScaledDetections(batch.new_zeros(0, 2), batch.new_zeros(0, self.dim), batch.new_zeros(0),
                                            batch.new_zeros(0)))
                continue
            kp, desc = torch.cat([d.keypoints for d in dets]), torch.cat([d.descriptors for d in dets])
            scores, sizes = torch.cat([d.scores for d in dets]), torch.cat([d.sizes for d in dets])
            if self.max_keypoints and len(scores) > self.max_keypoints:
                top = scores.topk(self.max_keypoints).indices
                kp, desc, scores, sizes = kp[top], desc[top], scores[top], sizes[top]
            out.append(ScaledDetections(kp, desc, scores, sizes))
        logger.debug("R2D2: %d levels on %dx%d, %s keypoints", len(levels), width, height, [len(d.scores) for d in out])
        return out
