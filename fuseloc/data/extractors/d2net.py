"""D2-Net (Dusmanu et al., CVPR 2019): dense VGG16 conv4_3 features, detect-and-describe; weights supplied.

The network is the release's test-time variant: VGG16 up to conv4_3 with pool3 replaced by a 2x2 average pool
of stride 1 and conv4_* dilated by 2, so the 512-D feature map keeps stride 4. Parameter names follow the
release checkpoints (``d2_tf.pth``, ``d2_ots.pth``: ``{"model": {"dense_feature_extraction.model.<i>.weight"
...}}``, i = the torchvision VGG16 ``features`` index: 0, 2, 5, 7, 10, 12, 14, 17, 19, 21). ⚠ Written from
the paper and the released names as remembered, not checked against a real file here.

Detection is the paper's hard rule at test time: a feature-map position is a keypoint when its strongest
channel is also a 3x3 spatial maximum in that channel, passes the Hessian edge test (ratio 5), and its
quadratic sub-pixel refinement moves it by less than half a cell. Score = that channel's activation.
Feature-map position p maps to image pixel ``4 p + 1.5`` (the centre of its 4x4 block, hloc convention),
as the release does; the 2x2 stride-1 average pool shifts true receptive-field centres by another half
cell, which the release ignores and so do we, to keep keypoints identical.

By default every detection is kept (no top-k), single scale: the paper's and hloc's ``d2net-ss`` setting
(images shrunk to at most 1600 px). ``multiscale=True`` runs the release's ``process_multiscale`` pyramid
(scales 0.5, 1, 2 with features accumulated from coarse to fine, see :func:`multiscale_detections`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fuseloc.data.extractors.backbones import vgg16_features
from fuseloc.data.extractors.base import Detections, TorchLocalExtractor
from fuseloc.data.extractors.weights import load_into, load_state_dict, resolve_weights
from fuseloc.errors import InputError

#: Caffe-style BGR means (0-255) the released VGG16 weights were trained with.
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
#: pixel = STRIDE * cell + OFFSET (two 2x2 max-pools, each mapping p -> 2p + 0.5).
STRIDE, OFFSET = 4, 1.5


class DenseFeatureExtraction(nn.Module):
    """(B, 3, H, W) caffe-normalised BGR -> (B, 512, H/4 - 1, W/4 - 1), after ReLU."""

    def __init__(self) -> None:
        super().__init__()
        layers = list(vgg16_features().children())[:22]  # conv1_1 ... conv4_3 (without its ReLU)
        layers[16] = nn.AvgPool2d(2, stride=1)  # pool3 -> keep resolution; dilation below keeps receptive fields
        for i in (17, 19, 21):
            conv = layers[i]
            assert isinstance(conv, nn.Conv2d)
            layers[i] = nn.Conv2d(conv.in_channels, conv.out_channels, 3, padding=2, dilation=2)
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.model(x))


class D2NetModel(nn.Module):
    """RGB in [0, 1] -> dense features; the attribute name matches the release's state dict."""

    def __init__(self) -> None:
        super().__init__()
        self.dense_feature_extraction = DenseFeatureExtraction()
        self.register_buffer("mean", torch.tensor(CAFFE_BGR_MEAN).view(1, 3, 1, 1), persistent=False)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        return self.dense_feature_extraction(rgb.flip(1) * 255.0 - self.mean)


@dataclass
class HardDetections:
    """D2-Net detections of one image, in feature-map cells.

    Attributes:
        positions: (N, 2) refined (row, col) positions.
        cells: (N, 2) long, the integer (row, col) cells that fired.
        channels: (N,) the channel each fired in (the cell's strongest).
        scores: (N,) that channel's activation.
    """

    positions: torch.Tensor
    cells: torch.Tensor
    channels: torch.Tensor
    scores: torch.Tensor


@dataclass
class _Candidates:
    """Per position of (B, C, h, w) features: the hard test (B, h, w) bool, Newton step (B, h, w, 2), score, channel."""

    detected: torch.Tensor
    step: torch.Tensor
    score: torch.Tensor
    channel: torch.Tensor


def _candidates(features: torch.Tensor, edge_threshold: float) -> _Candidates:
    b, _, h, w = features.shape
    score, channel = features.max(dim=1)  # (B, h, w)
    padded = F.pad(features, (1, 1, 1, 1))
    index = channel[:, None]

    def at(dy: int, dx: int) -> torch.Tensor:
        """The strongest channel's value at the neighbour (dy, dx) of every position, (B, h, w)."""
        return padded[:, :, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w].gather(1, index)[:, 0]

    n = {(dy, dx): at(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)}
    is_local_max = torch.stack(list(n.values())).amax(0) <= score
    dii = n[(-1, 0)] - 2 * score + n[(1, 0)]
    djj = n[(0, -1)] - 2 * score + n[(0, 1)]
    dij = 0.25 * (n[(-1, -1)] - n[(-1, 1)] - n[(1, -1)] + n[(1, 1)])
    di = 0.5 * (n[(1, 0)] - n[(-1, 0)])
    dj = 0.5 * (n[(0, 1)] - n[(0, -1)])
    det = dii * djj - dij * dij
    trace = dii + djj
    is_not_edge = (det > 0) & (trace * trace <= (edge_threshold + 1) ** 2 / edge_threshold * det)
    safe = torch.where(det > 0, det, torch.ones_like(det))
    # Newton step -H^-1 g towards the extremum of the local quadratic
    step_i = -(djj * di - dij * dj) / safe
    step_j = -(-dij * di + dii * dj) / safe
    return _Candidates(is_local_max & is_not_edge, torch.stack([step_i, step_j], -1), score, channel)


def _refine(c: _Candidates, k: int, mask: torch.Tensor) -> HardDetections:
    """Image ``k``'s detections under ``mask`` (h, w) whose sub-cell step is < 0.5 and stays inside the map."""
    h, w = mask.shape
    rows, cols = torch.nonzero(mask, as_tuple=True)
    step = c.step[k, rows, cols]
    pos = torch.stack([rows, cols], 1).to(step.dtype) + step
    # the release drops steps of half a cell or more, then positions whose bilinear neighbourhood leaves the map
    ok = (step.abs() < 0.5).all(1) & (pos[:, 0] >= 0) & (pos[:, 0] <= h - 1) & (pos[:, 1] >= 0) & (pos[:, 1] <= w - 1)
    rows, cols, pos = rows[ok], cols[ok], pos[ok]
    return HardDetections(pos, torch.stack([rows, cols], 1), c.channel[k, rows, cols], c.score[k, rows, cols])


@torch.no_grad()
def hard_detections(features: torch.Tensor, edge_threshold: float = 5.0,
                    banned: torch.Tensor | None = None) -> list[HardDetections]:
    """D2-Net's test-time detections on (B, C, h, w) features, one :class:`HardDetections` per image.

    Only each position's strongest channel can fire (ties at the max are measure-zero with real features);
    the spatial max, derivatives and Hessian are taken in that channel with zero padding, as the release's
    3x3 filters do. ``banned`` (B, h, w) bool removes positions before refinement (multi-scale).
    """
    c = _candidates(features, edge_threshold)
    mask = c.detected if banned is None else c.detected & ~banned
    return [_refine(c, k, mask[k]) for k in range(features.shape[0])]


@torch.no_grad()
def multiscale_detections(net: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor,
                          scales: Sequence[float] = (0.5, 1.0, 2.0),
                          edge_threshold: float = 5.0) -> list[Detections]:
    """The release's ``process_multiscale`` on a batch: keypoints in hloc's convention in ``batch`` pixels.

    For each scale, in the given order: the image resampled by ``scale`` (bilinear, ``align_corners=True``,
    size ``floor(H scale)``); its features plus the previous level's accumulated features (bilinearly
    resampled, ``align_corners=True``); hard detections there, except at positions already detected at an
    earlier level (a mask carried along by nearest resampling); scores = accumulated activation / level
    number (1, 2, 3...); descriptors = the accumulated features sampled at the refined positions,
    L2-normalised. Level pixel positions map back with the ``align_corners=True`` geometry,
    ``x (W - 1) / (w_level - 1)``; the release uses ``x W / w_level``, a sub-pixel difference.
    """
    b, _, height, width = batch.shape
    parts: list[list[Detections]] = [[] for _ in range(b)]
    previous: torch.Tensor | None = None
    banned: torch.Tensor | None = None
    for level, scale in enumerate(scales):
        image = batch if scale == 1 else F.interpolate(batch, scale_factor=scale, mode="bilinear", align_corners=True)
        h_level, w_level = image.shape[-2:]
        features = net(image)
        h, w = features.shape[-2:]
        if previous is not None:
            features = features + F.interpolate(previous, size=(h, w), mode="bilinear", align_corners=True)
        c = _candidates(features, edge_threshold)
        mask = c.detected
        if banned is not None:
            banned = F.interpolate(banned[:, None].float(), size=(h, w))[:, 0] > 0  # nearest, as the release
            mask = mask & ~banned
            banned = banned | mask
        else:
            banned = mask
        sx = (width - 1) / max(w_level - 1, 1)
        sy = (height - 1) / max(h_level - 1, 1)
        for k in range(b):
            det = _refine(c, k, mask[k])
            desc = F.normalize(bilinear_at(features[k], det.positions), dim=1)
            xy = (det.positions * STRIDE + OFFSET).flip(1)  # (row, col) cells -> (x, y) level pixels
            xy = xy * xy.new_tensor([sx, sy])
            parts[k].append(Detections(xy, desc, det.scores / (level + 1)))
        previous = features
    return [Detections(torch.cat([d.keypoints for d in p]), torch.cat([d.descriptors for d in p]),
                       torch.cat([d.scores for d in p])) for p in parts]


def bilinear_at(features: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """(N, C) bilinear samples of one (C, h, w) map at (N, 2) (row, col) positions inside the map."""
    _, h, w = features.shape
    size = positions.new_tensor([max(w - 1, 1), max(h - 1, 1)])
    grid = (positions.flip(1) / size * 2 - 1).view(1, 1, -1, 2)
    return F.grid_sample(features[None], grid.to(features.dtype), mode="bilinear", align_corners=True)[0, :, 0].T


class D2Net(TorchLocalExtractor):
    """D2-Net keypoints with 512-D descriptors.

    Args:
        weights: path of ``d2_tf.pth``; default: the torch hub checkpoint directory.
        max_keypoints: keep the highest-scoring keypoints (0 = all detections, the paper's setting).
        resize_max: longest image side before extraction (0 = keep); the release uses 1600.
        edge_threshold: Hessian eigenvalue-ratio bound of the edge test (release: 5).
        multiscale: run the release's image pyramid over ``scales`` instead of the single scale 1.
        scales: pyramid scales, coarse to fine, used when ``multiscale`` (release: 0.5, 1, 2).
        batch_size: images per forward pass.
        device: default CUDA when available.
    """

    name = "d2net"
    size_multiple = 4

    def __init__(self, weights: str | None = None, max_keypoints: int = 0, resize_max: int = 1600,
                 edge_threshold: float = 5.0, multiscale: bool = False, scales: Sequence[float] = (0.5, 1.0, 2.0),
                 batch_size: int = 2, device: str | None = None):
        super().__init__(max_keypoints, resize_max, batch_size, device)
        if multiscale and (not scales or any(not s > 0 for s in scales)):
            raise InputError(f"D2-Net scales must be positive numbers, got {list(scales)}")
        self.weights = weights
        self.edge_threshold = edge_threshold
        self.multiscale = multiscale
        self.scales = tuple(float(s) for s in scales)
        self._weights_path = resolve_weights(weights, "d2_tf.pth", "D2-Net", "github.com/mihaidusmanu/d2-net")

    @property
    def dim(self) -> int:
        return 512

    def _extra_config(self) -> dict:
        return {"weights": self.weights, "edge_threshold": self.edge_threshold, "multiscale": self.multiscale,
                **({"scales": list(self.scales)} if self.multiscale else {})}

    def _tag_extra(self) -> list[str]:
        if not self.multiscale:
            return ["ss"]
        return ["ms" + "-".join(f"{s:g}" for s in self.scales)]

    def _build(self) -> torch.nn.Module:
        net = D2NetModel()
        load_into(net, load_state_dict(self._weights_path, "D2-Net"), self._weights_path, "D2-Net", strip=("module.",))
        return net

    def _detect(self, net: torch.nn.Module, batch: torch.Tensor) -> list[Detections]:
        out = multiscale_detections(net, batch, self.scales if self.multiscale else (1.0,), self.edge_threshold)
        if self.max_keypoints:
            for k, det in enumerate(out):
                if len(det.scores) > self.max_keypoints:
                    top = det.scores.topk(self.max_keypoints).indices
                    out[k] = Detections(det.keypoints[top], det.descriptors[top], det.scores[top])
        return out
