"""What every extractor is, and what every network extractor shares.

:class:`LocalExtractor` (image -> keypoints and descriptors) and :class:`GlobalExtractor` (image and/or its
local features -> one vector) are the two interfaces the extraction runs (:mod:`fuseloc.data.extract`) drive.
:class:`TorchExtractor` is what a network of either kind does the same way: device choice, building the network
on first use, resizing, and batching images of one input size; :class:`TorchLocalExtractor` and
:class:`TorchGlobalExtractor` add only what differs between the two kinds. Weight files: :mod:`.weights`.

Image convention: networks get RGB float tensors (B, 3, H, W) in [0, 1]; each extractor applies its own
normalisation. Keypoints leave :meth:`TorchLocalExtractor._detect` in hloc's convention *in the resized image*
(top-left pixel centre at (0, 0)) and are mapped here to COLMAP's convention in the original image.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from fuseloc.errors import InputError
from fuseloc.types import LocalFeatures

# ----------------------------------------------------------------------------------------------- interfaces


class LocalExtractor:
    """Base class of local feature extractors: RGB uint8 image (H, W, 3) -> :class:`~fuseloc.types.LocalFeatures`."""

    def tag(self) -> str:
        """A short name that encodes the configuration; used in cache file names."""
        raise NotImplementedError

    def config(self) -> dict:
        """The full configuration, stored in the cache and compared on reuse."""
        raise NotImplementedError

    @property
    def dim(self) -> int:
        """Descriptor dimension D."""
        raise NotImplementedError

    #: images handed to :meth:`extract_batch` at once; networks override it (one forward pass per batch).
    batch_size: int = 1

    def __call__(self, image: np.ndarray) -> LocalFeatures:
        raise NotImplementedError

    def extract_batch(self, images: Sequence[np.ndarray]) -> list[LocalFeatures]:
        """Features of several RGB uint8 images; the default runs them one by one."""
        return [self(image) for image in images]


class GlobalExtractor:
    """Base class of global (image retrieval) descriptors: one (G,) vector per image.

    Two kinds exist: networks that look at the image (``uses_image``), and aggregators of the image's local
    features such as VLAD (``uses_local_features``) whose state is trained on the database descriptors by
    :meth:`fit`. :func:`~fuseloc.data.extract.extract_global_features` feeds each what it needs and stores the
    fitted state in the cache, so a resumed extraction describes every image with the same vocabulary.
    """

    #: decode the image and pass it to :meth:`describe`.
    uses_image: bool = True
    #: pass the image's local features to :meth:`describe`; :meth:`fit` gets database descriptors.
    uses_local_features: bool = False
    #: images per :meth:`describe_batch` call.
    batch_size: int = 1

    def tag(self) -> str:
        """A short name that encodes the configuration; used in cache file names."""
        raise NotImplementedError

    def config(self) -> dict:
        """The full configuration, stored in the cache and compared on reuse."""
        raise NotImplementedError

    def fit(self, train_descriptors: np.ndarray) -> GlobalExtractor:
        """Train on (M, D) local descriptors of the database; a no-op for pretrained networks."""
        return self

    @property
    def needs_fit(self) -> bool:
        return False

    def state(self) -> dict[str, np.ndarray]:
        """What :meth:`fit` learned, as arrays to store with the descriptors."""
        return {}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore what :meth:`state` returned."""

    def describe(self, image: np.ndarray | None, local: LocalFeatures | None = None) -> np.ndarray:
        """(G,) float32 descriptor of an RGB uint8 image (H, W, 3) and/or its local features."""
        raise NotImplementedError

    def describe_batch(self, images: Sequence[np.ndarray | None], locals_: Sequence[LocalFeatures | None]) -> list[np.ndarray]:
        return [self.describe(image, local) for image, local in zip(images, locals_, strict=False)]

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return self.describe(image, None)


# ------------------------------------------------------------------------------------------ network inputs


def default_device(device: str | None) -> torch.device:
    """``device`` as given, else CUDA when available, else CPU."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resized_shape(height: int, width: int, resize_max: int, multiple: int = 1) -> tuple[int, int]:
    """(height, width) with the longest side at most ``resize_max`` (0 = keep) and both sides multiples of ``multiple``."""
    scale = resize_max / max(height, width) if resize_max and max(height, width) > resize_max else 1.0
    h, w = max(1, round(height * scale)), max(1, round(width * scale))
    if multiple > 1:
        h, w = max(multiple, h // multiple * multiple), max(multiple, w // multiple * multiple)
    return h, w


def to_tensor(images: Sequence[np.ndarray], shape: tuple[int, int], device: torch.device) -> torch.Tensor:
    """RGB uint8 images -> (B, 3, H, W) float32 in [0, 1], resized to ``shape`` (area filter when shrinking)."""
    h, w = shape
    out = []
    for image in images:
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        if image.shape[:2] != (h, w):
            shrink = h < image.shape[0] or w < image.shape[1]
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        out.append(image)
    batch = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float().div_(255.0)
    return batch.to(device)


def group_by_shape(shapes: Sequence[tuple[int, int]]) -> dict[tuple[int, int], list[int]]:
    groups: dict[tuple[int, int], list[int]] = {}
    for i, shape in enumerate(shapes):
        groups.setdefault(shape, []).append(i)
    return groups


@dataclass
class Detections:
    """Keypoints of one resized image, as a network returns them.

    Attributes:
        keypoints: (N, 2) float, hloc convention (top-left pixel centre at (0, 0)), resized-image pixels.
        descriptors: (N, D) float.
        scores: (N,) float.
    """

    keypoints: torch.Tensor
    descriptors: torch.Tensor
    scores: torch.Tensor


# ---------------------------------------------------------------------------------------------- networks


class TorchExtractor:
    """A network run in batches of same-size images, on GPU when there is one: the part local and global share.

    Subclasses set ``name`` and ``size_multiple`` (or ``fixed_size``) and build the network in :meth:`_build`;
    the network is built on first use. Weight files are looked up in the subclass's ``__init__``
    (:func:`~fuseloc.data.extractors.weights.resolve_weights`) so a missing file fails before anything is extracted.

    Args:
        resize_max: downscale so the longest side is at most this many pixels (0 = never); ignored by
            models with a fixed input size.
        batch_size: images per forward pass (images of different sizes go in separate passes).
        device: ``cpu``, ``cuda``, ``cuda:1``...; default: CUDA when available.
    """

    name: str = "torch"
    #: input sides are rounded down to multiples of this.
    size_multiple: int = 1
    #: (height, width) the network always sees, or None to keep the aspect ratio under ``resize_max``.
    fixed_size: tuple[int, int] | None = None

    def __init__(self, resize_max: int, batch_size: int, device: str | None):
        self.resize_max = resize_max
        self.batch_size = batch_size
        self.device = device
        self._net: torch.nn.Module | None = None

    def _build(self) -> torch.nn.Module:
        raise NotImplementedError

    def _extra_config(self) -> dict:
        """What the subclass adds to :meth:`config` (weights, thresholds...)."""
        return {}

    @property
    def net(self) -> torch.nn.Module:
        if self._net is None:
            self._net = self._build().to(default_device(self.device)).eval()
        return self._net

    def _size_tag(self) -> str:
        """The input size in tags: ``s<h>x<w>`` for a fixed size, else ``r<resize_max>``."""
        return f"s{self.fixed_size[0]}x{self.fixed_size[1]}" if self.fixed_size else f"r{self.resize_max}"

    def _input_shape(self, image: np.ndarray) -> tuple[int, int]:
        return self.fixed_size or resized_shape(image.shape[0], image.shape[1], self.resize_max, self.size_multiple)

    def _batches(self, images: Sequence[np.ndarray]) -> Iterator[tuple[list[int], tuple[int, int], torch.Tensor]]:
        """(indices, input shape, tensor) per forward pass: same-size images, at most ``batch_size`` at once."""
        device = next(iter(self.net.parameters())).device
        step = max(1, self.batch_size)
        for shape, indices in group_by_shape([self._input_shape(image) for image in images]).items():
            for start in range(0, len(indices), step):
                chunk = indices[start : start + step]
                yield chunk, shape, to_tensor([images[i] for i in chunk], shape, device)


class TorchLocalExtractor(TorchExtractor, LocalExtractor):
    """A local feature network: subclasses run it in :meth:`_detect`.

    Args:
        max_keypoints: keep at most this many keypoints, strongest first (0 = all the network returns).
        resize_max: downscale so the longest side is at most this many pixels (0 = never).
        batch_size: images per forward pass (images of different sizes go in separate passes).
        device: ``cpu``, ``cuda``, ``cuda:1``...; default: CUDA when available.
    """

    def __init__(self, max_keypoints: int = 2048, resize_max: int = 1024, batch_size: int = 4, device: str | None = None):
        super().__init__(resize_max, batch_size, device)
        self.max_keypoints = max_keypoints

    def _detect(self, net: torch.nn.Module, batch: torch.Tensor) -> list[Detections]:
        raise NotImplementedError

    def _tag_extra(self) -> list[str]:
        return []

    def config(self) -> dict:
        return {"name": self.name, "max_keypoints": self.max_keypoints, "resize_max": self.resize_max,
                **self._extra_config()}

    def tag(self) -> str:
        extra = "".join(f"-{v}" for v in self._tag_extra())
        return f"{self.name}{extra}-n{self.max_keypoints}-{self._size_tag()}"

    def __call__(self, image: np.ndarray) -> LocalFeatures:
        return self.extract_batch([image])[0]

    @torch.inference_mode()
    def extract_batch(self, images: Sequence[np.ndarray]) -> list[LocalFeatures]:
        results: list[LocalFeatures | None] = [None] * len(images)
        for chunk, shape, batch in self._batches(images):
            for i, det in zip(chunk, self._detect(self.net, batch), strict=True):
                results[i] = self._to_original(det, images[i].shape[:2], shape)
        return results  # type: ignore[return-value]

    def _to_original(self, det: Detections, original: tuple[int, int], resized: tuple[int, int]) -> LocalFeatures:
        height, width = original
        scores = det.scores.float().cpu().numpy().reshape(-1)
        order = np.argsort(-scores, kind="stable")
        if self.max_keypoints:
            order = order[: self.max_keypoints]
        kp = det.keypoints.float().cpu().numpy().reshape(-1, 2)[order]
        desc = det.descriptors.float().cpu().numpy()[order]
        scale = np.array([resized[1] / width, resized[0] / height], np.float32)
        # hloc convention in the resized image -> COLMAP convention (+0.5) in the original image
        kp = ((kp + 0.5) / scale).astype(np.float32)
        return LocalFeatures(kp, np.ascontiguousarray(desc, np.float32), scores[order].astype(np.float32), (width, height))


class TorchGlobalExtractor(TorchExtractor, GlobalExtractor):
    """A global descriptor network: its forward pass maps a batch to (B, G) descriptors.

    Args:
        resize_max: downscale so the longest side is at most this many pixels (0 = never); ignored by
            models with a fixed input size.
        batch_size: images per forward pass.
        device: ``cpu``, ``cuda``...; default: CUDA when available.
    """

    name: str = "torch-global"

    def __init__(self, resize_max: int = 640, batch_size: int = 4, device: str | None = None):
        super().__init__(resize_max, batch_size, device)

    def config(self) -> dict:
        size = list(self.fixed_size) if self.fixed_size else self.resize_max
        return {"name": self.name, "resize": size, **self._extra_config()}

    def tag(self) -> str:
        return f"{self.name}-{self._size_tag()}"

    def describe(self, image: np.ndarray | None, local: LocalFeatures | None = None) -> np.ndarray:
        return self.describe_batch([image], [local])[0]

    @torch.inference_mode()
    def describe_batch(self, images: Sequence[np.ndarray | None], locals_: Sequence[LocalFeatures | None]) -> list[np.ndarray]:
        if any(im is None for im in images):
            raise InputError(f"{self.tag()} describes images, and an image was not given")
        out: list[np.ndarray | None] = [None] * len(images)
        for chunk, _, batch in self._batches(images):  # type: ignore[arg-type]
            for i, d in zip(chunk, self.net(batch).float().cpu().numpy(), strict=False):
                out[i] = d
        return out  # type: ignore[return-value]


#: ImageNet statistics that torchvision-trained backbones (VGG, ResNet) expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageNetNormalize(torch.nn.Module):
    """(x - mean) / std per channel, as a module so it moves with the network."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std
