"""What every network extractor shares: device choice, resizing, batching, and finding weight files.

Image convention: networks get RGB float tensors (B, 3, H, W) in [0, 1]; each extractor applies its own
normalisation. Keypoints leave :meth:`TorchLocalExtractor._detect` in hloc's convention *in the resized image*
(top-left pixel centre at (0, 0)) and are mapped here to COLMAP's convention in the original image.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from fuseloc.data.features import GlobalExtractor, LocalExtractor, LocalFeatures
from fuseloc.errors import InputError

logger = logging.getLogger(__name__)


def default_device(device: str | None) -> torch.device:
    """``device`` as given, else CUDA when available, else CPU."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ----------------------------------------------------------------------------------------------------------
# Weight files
# ----------------------------------------------------------------------------------------------------------

#: Environment variable naming checkpoint files (separated by ``os.pathsep``) the user trusts enough to unpickle
#: without restriction. Unset by default: checkpoints are read with torch's weights-only unpickler.
TRUSTED_WEIGHTS_ENV = "FUSELOC_TRUSTED_WEIGHTS"

#: State-dict wrappers found in released checkpoints, tried in order: Lightning and Nanne's pytorch-NetVlad
#: (``state_dict``), CricaVPR (``model_state_dict``), D2-Net (``model``), others (``net``).
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net")


def hub_checkpoint_dir() -> Path:
    """Where torch.hub keeps downloaded checkpoints (``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def huggingface_hub_cache() -> Path:
    """Where ``huggingface_hub`` keeps downloaded repositories (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def huggingface_cached_file(repo_id: str, filename: str) -> Path:
    """The path ``hf_hub_download(repo_id, filename)`` stores its file at (the ``main`` snapshot when known).

    The file need not exist; no network access, no ``huggingface_hub`` import.
    """
    repo_dir = huggingface_hub_cache() / ("models--" + repo_id.replace("/", "--"))
    ref = repo_dir / "refs" / "main"
    if ref.is_file():
        return repo_dir / "snapshots" / ref.read_text().strip() / filename
    found = sorted(repo_dir.glob(f"snapshots/*/{filename}"))
    return found[-1] if found else repo_dir / "snapshots" / "<revision>" / filename


def resolve_weights(weights: str | Path | None, filename: str, what: str, source: str,
                    alternatives: Sequence[Path] = (), default: Path | None = None) -> Path:
    """The weight file of a deep extractor, or one clear error that says which file is expected where.

    Args:
        weights: a user-given path; None looks for ``default``, then each of ``alternatives``.
        filename: the file name of the original release.
        what: the model's name, for the message.
        source: where the original weights are published, for the message.
        alternatives: other places (older releases, other layouts) tried after ``default`` when ``weights`` is None.
        default: where the release is looked for when ``weights`` is None; default ``<torch hub>/checkpoints/<filename>``.
    """
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise InputError(f"{what} weights not found: expected the file {filename!r} from {source} here", path)
        return path
    path = default if default is not None else hub_checkpoint_dir() / filename
    for candidate in (path, *alternatives):
        if candidate.is_file():
            return candidate
    also = "".join(f" or {str(p)!r}" for p in alternatives)
    raise InputError(f"{what} weights not found: expected the file {filename!r} from {source} here{also} "
                     f"(or pass weights=/path/to/{filename})", path)


def numpy_safe_globals() -> list[tuple[Any, str]]:
    """The numpy reconstructors a training checkpoint needs for numpy scalars and numeric arrays, and no more.

    Training scripts store metrics next to the weights: pytorch-NetVlad's ``best_score`` and ``recalls`` are
    numpy float64 scalars, CricaVPR's ``recalls`` a float64 array and ``best_r5`` a scalar. Pickle writes a
    scalar as ``numpy.<core>.multiarray.scalar(numpy.dtype(...), bytes)`` and an array as
    ``numpy.<core>.multiarray._reconstruct(numpy.ndarray, ...)`` followed by a ``BUILD`` of its dtype and data,
    where ``<core>`` is ``core`` under numpy 1.x and ``_core`` under numpy 2.x, so both names are mapped to the
    installed functions. ``BUILD`` on a dtype needs that dtype's class (numpy >= 1.25: ``numpy.dtypes.Float64DType``...):
    only booleans, integers and floats are allowed, so object arrays (which could carry anything) stay refused.
    """
    core = getattr(np, "_core", None)
    multiarray = core.multiarray if core is not None and hasattr(core, "multiarray") else np.core.multiarray
    entries: list[tuple[Any, str]] = []
    for name in ("scalar", "_reconstruct"):
        function = getattr(multiarray, name)
        entries += [(function, f"numpy._core.multiarray.{name}"), (function, f"numpy.core.multiarray.{name}")]
    entries += [(np.ndarray, "numpy.ndarray"), (np.dtype, "numpy.dtype")]
    for code in "?bhilqBHILQefd":
        dtype_class = type(np.dtype(code))
        if dtype_class is not np.dtype:  # numpy >= 1.25 has one class per dtype
            entries.append((dtype_class, f"{dtype_class.__module__}.{dtype_class.__qualname__}"))
    return entries


def _trusted(path: Path) -> bool:
    listed = [p for p in os.environ.get(TRUSTED_WEIGHTS_ENV, "").split(os.pathsep) if p]
    return any(Path(p).expanduser().resolve() == path.resolve() for p in listed)


def _is_safetensors(path: Path) -> bool:
    """safetensors: an 8-byte little-endian header length, then a JSON header (``{``)."""
    if path.suffix == ".safetensors":
        return True
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < (1 << 30)


def read_checkpoint(path: Path, what: str, trusted: bool | None = None) -> Any:
    """A weight file's content: safetensors, or a torch checkpoint unpickled safely.

    Torch files are read with torch's weights-only unpickler, which builds tensors and containers only, widened
    by :func:`numpy_safe_globals` for the numpy metrics training checkpoints carry. A file holding anything else
    (an arbitrary class) is refused with an error that says what to do; full unpickling, which can run any
    code the file contains, happens only for ``trusted=True`` or a file listed in ``$FUSELOC_TRUSTED_WEIGHTS``.
    """
    try:
        if _is_safetensors(path):
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        if trusted or (trusted is None and _trusted(path)):
            logger.warning("%s: unpickling %s weights without restriction (trusted)", path, what)
            return torch.load(path, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals(numpy_safe_globals()):  # type: ignore[arg-type]
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message is a long tutorial; the line that names the refused object is what helps
        found = re.search(r"(Unsupported global: GLOBAL \S+|Can only [^\n]*|Trying to [^\n]*)", str(exc))
        if found is None:  # not a refusal: a corrupt or foreign file
            detail = str(exc).split("WeightsUnpickler error:")[-1].strip().splitlines()[0][:200]
            raise InputError(f"cannot read {what} weights (UnpicklingError: {detail})", path) from None
        detail = found.group(1)[:200]
        raise InputError(f"{what} weights hold objects other than tensors and numbers, refused for safety ({detail}); "
                         f"if you trust this file, list it in ${TRUSTED_WEIGHTS_ENV} to unpickle it fully, or re-save "
                         "only its state dict", path) from None
    except Exception as exc:  # torch and safetensors raise many types for corrupt or foreign files
        detail = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise InputError(f"cannot read {what} weights ({type(exc).__name__}: {detail})", path) from None


def unwrap_state_dict(checkpoint: Any, path: Path, what: str, keys: Sequence[str] = STATE_DICT_KEYS) -> dict[str, torch.Tensor]:
    """The state dict in a checkpoint: the checkpoint itself, or the first of ``keys`` that holds a dict."""
    if isinstance(checkpoint, dict):
        for key in keys:
            if isinstance(checkpoint.get(key), dict):
                checkpoint = checkpoint[key]
                break
    if not isinstance(checkpoint, dict) or not checkpoint:
        raise InputError(f"{what} weights: expected a state dict (or one under {', '.join(map(repr, keys))}), "
                         f"found {type(checkpoint).__name__}", path)
    return checkpoint


def load_state_dict(path: Path, what: str, keys: Sequence[str] = STATE_DICT_KEYS,
                    trusted: bool | None = None) -> dict[str, torch.Tensor]:
    """A checkpoint's state dict: plain, wrapped under one of ``keys`` as releases do, or safetensors.

    See :func:`read_checkpoint` for what is unpickled and how to trust a file.
    """
    return unwrap_state_dict(read_checkpoint(path, what, trusted), path, what, keys)


def rename_prefixes(state: dict[str, torch.Tensor], renames: Sequence[tuple[str, str]] = (),
                    drop: Sequence[str] = ()) -> dict[str, torch.Tensor]:
    """``state`` with each key starting with ``old`` made to start with ``new`` (first match) and ``drop`` keys removed."""
    out = {}
    for key, value in state.items():
        if key in drop:
            continue
        for old, new in renames:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        out[key] = value
    return out


def load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, what: str, strip: Sequence[str] = (),
              derived: Sequence[str] = ()) -> None:
    """Load ``state`` strictly, after removing any of the ``strip`` prefixes (e.g. DataParallel's ``module.``).

    ``derived`` names buffers the model computes itself (e.g. coordinate grids) that releases do not store.
    A mismatch is one error that counts and names the missing, unexpected and misshapen keys.
    """
    cleaned = rename_prefixes(state, [(prefix, "") for prefix in strip])
    own = model.state_dict()
    for key in derived:
        if key not in cleaned and key in own:
            cleaned[key] = own[key]
    missing = [k for k in own if k not in cleaned]
    unexpected = [k for k in cleaned if k not in own]
    misshapen = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in cleaned.items()
                 if k in own and isinstance(v, torch.Tensor) and v.shape != own[k].shape]
    if missing or unexpected or misshapen:
        parts = [f"{len(items)} {label} (e.g. {', '.join(items[:3])})"
                 for label, items in (("missing", missing), ("unexpected", unexpected), ("misshapen", misshapen)) if items]
        raise InputError(f"{what} weights do not fit the architecture: {'; '.join(parts)}", path)
    try:
        model.load_state_dict(cleaned, strict=True)
    except (RuntimeError, TypeError) as exc:
        first = str(exc).replace("\n", " ")[:300]
        raise InputError(f"{what} weights do not fit the architecture: {first}", path) from None


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


class TorchLocalExtractor(LocalExtractor):
    """A local feature network run in batches of same-size images, on GPU when there is one.

    Subclasses set ``name`` and ``size_multiple``, build the network in :meth:`_build` and run it in
    :meth:`_detect`. The network is built on first use; weight files are looked up in ``__init__`` so a
    missing file fails before anything is extracted.

    Args:
        max_keypoints: keep at most this many keypoints, strongest first (0 = all the network returns).
        resize_max: downscale so the longest side is at most this many pixels (0 = never).
        batch_size: images per forward pass (images of different sizes go in separate passes).
        device: ``cpu``, ``cuda``, ``cuda:1``...; default: CUDA when available.
    """

    name: str = "torch"
    size_multiple: int = 1

    def __init__(self, max_keypoints: int = 2048, resize_max: int = 1024, batch_size: int = 4, device: str | None = None):
        self.max_keypoints = max_keypoints
        self.resize_max = resize_max
        self.batch_size = batch_size
        self.device = device
        self._net: torch.nn.Module | None = None

    # subclasses ------------------------------------------------------------------------------------------

    def _build(self) -> torch.nn.Module:
        raise NotImplementedError

    def _detect(self, net: torch.nn.Module, batch: torch.Tensor) -> list[Detections]:
        raise NotImplementedError

    def _extra_config(self) -> dict:
        return {}

    # common ----------------------------------------------------------------------------------------------

    def config(self) -> dict:
        return {"name": self.name, "max_keypoints": self.max_keypoints, "resize_max": self.resize_max,
                **self._extra_config()}

    def tag(self) -> str:
        extra = "".join(f"-{v}" for v in self._tag_extra())
        return f"{self.name}{extra}-n{self.max_keypoints}-r{self.resize_max}"

    def _tag_extra(self) -> list[str]:
        return []

    @property
    def net(self) -> torch.nn.Module:
        if self._net is None:
            self._net = self._build().to(default_device(self.device)).eval()
        return self._net

    def __call__(self, image: np.ndarray) -> LocalFeatures:
        return self.extract_batch([image])[0]

    @torch.inference_mode()
    def extract_batch(self, images: Sequence[np.ndarray]) -> list[LocalFeatures]:
        net = self.net
        device = next(iter(net.parameters())).device
        shapes = [resized_shape(im.shape[0], im.shape[1], self.resize_max, self.size_multiple) for im in images]
        results: list[LocalFeatures | None] = [None] * len(images)
        for shape, indices in group_by_shape(shapes).items():
            for start in range(0, len(indices), max(1, self.batch_size)):
                chunk = indices[start : start + max(1, self.batch_size)]
                detections = self._detect(net, to_tensor([images[i] for i in chunk], shape, device))
                for i, det in zip(chunk, detections, strict=True):
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


class TorchGlobalExtractor(GlobalExtractor):
    """A global descriptor network run in batches of same-size images, on GPU when there is one.

    Args:
        resize_max: downscale so the longest side is at most this many pixels (0 = never); ignored by
            models with a fixed input size.
        batch_size: images per forward pass.
        device: ``cpu``, ``cuda``...; default: CUDA when available.
    """

    name: str = "torch-global"
    size_multiple: int = 1
    #: (height, width) the network always sees, or None to keep the aspect ratio under ``resize_max``.
    fixed_size: tuple[int, int] | None = None

    def __init__(self, resize_max: int = 640, batch_size: int = 4, device: str | None = None):
        self.resize_max = resize_max
        self.batch_size = batch_size
        self.device = device
        self._net: torch.nn.Module | None = None

    def _build(self) -> torch.nn.Module:
        raise NotImplementedError

    def _extra_config(self) -> dict:
        return {}

    def config(self) -> dict:
        size = list(self.fixed_size) if self.fixed_size else self.resize_max
        return {"name": self.name, "resize": size, **self._extra_config()}

    def tag(self) -> str:
        size = f"s{self.fixed_size[0]}x{self.fixed_size[1]}" if self.fixed_size else f"r{self.resize_max}"
        return f"{self.name}-{size}"

    @property
    def net(self) -> torch.nn.Module:
        if self._net is None:
            self._net = self._build().to(default_device(self.device)).eval()
        return self._net

    def describe(self, image: np.ndarray | None, local: LocalFeatures | None = None) -> np.ndarray:
        return self.describe_batch([image], [local])[0]

    @torch.inference_mode()
    def describe_batch(self, images: Sequence[np.ndarray | None], locals_: Sequence[LocalFeatures | None]) -> list[np.ndarray]:
        if any(im is None for im in images):
            raise InputError(f"{self.tag()} describes images, and an image was not given")
        net = self.net
        device = next(iter(net.parameters())).device
        shapes = [self.fixed_size or resized_shape(im.shape[0], im.shape[1], self.resize_max, self.size_multiple)
                  for im in images]  # type: ignore[union-attr]
        out: list[np.ndarray | None] = [None] * len(images)
        for shape, indices in group_by_shape(shapes).items():
            for start in range(0, len(indices), max(1, self.batch_size)):
                chunk = indices[start : start + max(1, self.batch_size)]
                desc = net(to_tensor([images[i] for i in chunk], shape, device))  # type: ignore[misc]
                for i, d in zip(chunk, desc.float().cpu().numpy(), strict=False):
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
