"""Weight files of the network extractors: where they are looked for, and how they are read safely.

Every file is read by :func:`load_state_dict`: safetensors, or torch's weights-only unpickler with an allowlist
of numpy scalars and arrays (the metrics training checkpoints carry); anything else is refused unless the file
is listed in ``$FUSELOC_TRUSTED_WEIGHTS``.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fuseloc.errors import InputError

logger = logging.getLogger(__name__)

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
