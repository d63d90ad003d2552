"""R2D2 (Revaud et al., NeurIPS 2019): full-resolution 128-D descriptors with reliability and repeatability maps.

The network is the release's ``Quad_L2Net_ConfCFS``: an L2-Net-like stack of 3x3 convolutions where strides
are replaced by growing dilations (so every map keeps the input resolution), the final 8x8 convolution
replaced by three 2x2 ones, batch norms without affine parameters, then two 1x1 heads on the squared
descriptors: reliability (2 logits, softmax) and repeatability (1 logit, x -> softplus(x) / (1 + softplus(x))).
Parameter names follow the release checkpoint ``r2d2_WASF_N16.pt`` (``{"net": "Quad_L2Net_ConfCFS()",
"state_dict": {"module.ops.<i>.weight", ..., "module.clf.weight", "module.sal.weight"}}``), ops indexed in
creation order (conv, bn, relu per block). ⚠ Written from the paper and the released names as remembered,
not checked against a real file here.

Detection as the release: 3x3 maxima of repeatability with repeatability and reliability both above their
thresholds (0.7), score = reliability x repeatability, the top-k kept; descriptors are read at the keypoint
pixel. Single scale only (the release's image pyramid, scale factor 2^0.25 between 256 and 1024 px, is not
implemented).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fuseloc.data.extractors.base import (
    Detections,
    ImageNetNormalize,
    TorchLocalExtractor,
    load_into,
    load_state_dict,
    resolve_weights,
)


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


class R2D2(TorchLocalExtractor):
    """R2D2 keypoints and 128-D descriptors.

    Args:
        weights: path of ``r2d2_WASF_N16.pt``; default: the torch hub checkpoint directory.
        max_keypoints: top-k by reliability x repeatability (release: 5000; 0 = all detections).
        resize_max: longest image side before extraction (0 = keep); the release's largest scale is 1024.
        reliability_threshold: minimum reliability (release: 0.7).
        repeatability_threshold: minimum repeatability (release: 0.7).
        batch_size: images per forward pass.
        device: default CUDA when available.
    """

    name = "r2d2"

    def __init__(self, weights: str | None = None, max_keypoints: int = 5000, resize_max: int = 1024,
                 reliability_threshold: float = 0.7, repeatability_threshold: float = 0.7, batch_size: int = 2,
                 device: str | None = None):
        super().__init__(max_keypoints, resize_max, batch_size, device)
        self.weights = weights
        self.reliability_threshold = reliability_threshold
        self.repeatability_threshold = repeatability_threshold
        self._weights_path = resolve_weights(weights, "r2d2_WASF_N16.pt", "R2D2", "github.com/naver/r2d2")

    @property
    def dim(self) -> int:
        return 128

    def _extra_config(self) -> dict:
        return {"weights": self.weights, "reliability_threshold": self.reliability_threshold,
                "repeatability_threshold": self.repeatability_threshold}

    def _build(self) -> torch.nn.Module:
        net = QuadL2NetConfCFS()
        load_into(net, load_state_dict(self._weights_path, "R2D2"), self._weights_path, "R2D2", strip=("module.",))
        return net

    def _detect(self, net: torch.nn.Module, batch: torch.Tensor) -> list[Detections]:
        maps: R2D2Maps = net(batch)
        rep, rel = maps.repeatability[:, 0], maps.reliability[:, 0]
        is_max = rep == F.max_pool2d(rep[:, None], 3, stride=1, padding=1)[:, 0]
        keep = is_max & (rep >= self.repeatability_threshold) & (rel >= self.reliability_threshold)
        out = []
        for k in range(len(batch)):
            ys, xs = torch.nonzero(keep[k], as_tuple=True)
            scores = rel[k, ys, xs] * rep[k, ys, xs]
            if self.max_keypoints and len(scores) > self.max_keypoints:
                top = scores.topk(self.max_keypoints).indices
                ys, xs, scores = ys[top], xs[top], scores[top]
            kp = torch.stack([xs, ys], 1).to(rep.dtype)
            out.append(Detections(kp, maps.descriptors[k, :, ys, xs].T, scores))
        return out
