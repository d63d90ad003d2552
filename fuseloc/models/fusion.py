"""Fusion of local and global descriptors: ``f = λ·local + (1-λ)·R(global)`` (FUSELOC) and its interface.

Every fusion splits into a per-image step (:meth:`Fusion.reduce_global`, run once per image) and a cheap
per-keypoint step (:meth:`Fusion.fuse`), so a learned fusion costs the same at query time as the fixed one.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from fuseloc.errors import InputError

logger = logging.getLogger(__name__)

Reduction = Literal["pca", "random", "gaussian", "shuffle"]


def pca_projection(global_desc: np.ndarray, out_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """PCA of (N, G) descriptors -> (mean (G,), projection (G, out_dim)).

    With fewer samples than ``out_dim`` the extra columns are zero: they would only carry noise.
    """
    x = np.asarray(global_desc, np.float64)
    mean = x.mean(0)
    axes, _ = _principal_axes(x - mean, out_dim)
    projection = np.zeros((x.shape[1], out_dim))
    projection[:, : axes.shape[1]] = axes
    # Axis signs are arbitrary; fix them so repeated fits give identical maps.
    return mean.astype(np.float32), _fix_signs(projection).astype(np.float32)


def _principal_axes(centered: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(G, k) leading principal axes of (N, G) centred rows and the (k,) scatter along each, by the cheaper of the
    SVD of the rows (N <= G) and the eigendecomposition of the G x G scatter (N > G: hundreds of thousands of
    images cost one G x G matrix)."""
    if len(centered) <= centered.shape[1]:
        _, singular, vt = np.linalg.svd(centered, full_matrices=False)
        return vt[:k].T, singular[:k] ** 2
    values, vectors = np.linalg.eigh(centered.T @ centered)
    return vectors[:, ::-1][:, :k], values[::-1][:k]


def _fix_signs(projection: np.ndarray) -> np.ndarray:
    """Columns signed so that each one's largest entry is positive: repeated fits give identical maps."""
    signs = np.sign(projection[np.abs(projection).argmax(0), np.arange(projection.shape[1])])
    signs[signs == 0] = 1
    return projection * signs


#: Cap on the dimensions a learned whitening works in: its scatter matrices are pca_dim² float64 (128 MB at 4096),
#: so a 32k-D global descriptor over a hundred thousand images still fits in memory.
MAX_WHITENING_DIM = 4096


def whitening_projection(
    samples: np.ndarray,
    places: np.ndarray,
    out_dim: int,
    shrinkage: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """Learned discriminative whitening of global descriptors -> (mean (G,), projection (G, out_dim)).

    Samples with the same ``places`` label show the same place (a database image and its renderings under
    other light, a query and the database image it was taken beside). The projection removes what varies within
    a place and keeps what separates places, in closed form (the learned whitening of Mikolajczyk & Matas and of
    Radenović et al., an LDA): PCA of ``samples`` to as many dimensions as they span (``min(G, N - 1)``, at most
    :data:`MAX_WHITENING_DIM`); whitening by the inverse square root
    of the within-place scatter (deviations from each place's mean, over places with two or more samples),
    shrunk toward a multiple of the identity by ``shrinkage`` so that few samples still give a well-posed and
    stable inverse; then the ``out_dim`` directions of largest variance of the whitened samples.

    Args:
        samples: (N, G) descriptors spanning the places (e.g. every training image, all conditions).
        places: (N,) int place of each sample; -1: none (it only shapes the PCA).
        out_dim: D, output dimension.
        shrinkage: weight of the identity in the within-place scatter, in [0, 1].
    """
    x = np.asarray(samples, np.float64)
    places = np.asarray(places, np.int64)
    if len(places) != len(x):
        raise InputError(f"{len(places)} place labels for {len(x)} descriptors")
    if not 0.0 <= shrinkage <= 1.0:
        raise InputError(f"shrinkage must be in [0, 1], got {shrinkage}")
    _, place_index, place_count = np.unique(places, return_inverse=True, return_counts=True)
    within = (places >= 0) & (place_count[place_index] > 1)
    if not within.any():
        raise InputError("whitening needs at least one place seen in two or more descriptors")
    # Fewer samples than output dimensions: what they span is whitened, the other columns stay zero (as in PCA).
    mean = x.mean(0)
    basis, spread = _principal_axes(x - mean, max(1, min(x.shape[1], len(x) - 1, MAX_WHITENING_DIM)))
    pca_dim = basis.shape[1]
    reduced = (x[within] - mean) @ basis
    index = place_index[within]
    sums = np.zeros((int(index.max()) + 1, pca_dim))
    np.add.at(sums, index, reduced)
    deviations = reduced - (sums / np.bincount(index)[:, None])[index]
    scatter = deviations.T @ deviations / len(deviations)
    scatter = (1.0 - shrinkage) * scatter + shrinkage * np.trace(scatter) / pca_dim * np.eye(pca_dim)
    values, vectors = np.linalg.eigh(scatter)
    values = np.maximum(values, values.max() * 1e-12)
    whiten = (vectors / np.sqrt(values)) @ vectors.T
    # The samples' scatter in the PCA basis is diag(spread); whitened, it is whiten·diag(spread)·whiten.
    values, vectors = np.linalg.eigh(whiten @ np.diag(spread) @ whiten)
    axes = vectors[:, ::-1][:, :out_dim]
    projection = np.zeros((x.shape[1], out_dim))
    projection[:, : axes.shape[1]] = basis @ whiten @ axes
    return mean.astype(np.float32), _fix_signs(projection).astype(np.float32)


def random_selection(global_dim: int, out_dim: int, seed: int) -> np.ndarray:
    """A (G, out_dim) 0/1 matrix picking ``out_dim`` distinct coordinates of the global descriptor."""
    if out_dim > global_dim:
        raise InputError(f"cannot select {out_dim} of {global_dim} global dimensions")
    picked = np.sort(np.random.default_rng(seed).choice(global_dim, out_dim, replace=False))
    projection = np.zeros((global_dim, out_dim), np.float32)
    projection[picked, np.arange(out_dim)] = 1.0
    return projection


def shuffled_selection(global_dim: int, out_dim: int, seed: int = 0) -> np.ndarray:
    """A (G, out_dim) 0/1 matrix keeping the first ``out_dim`` coordinates of a seeded shuffle of the G
    global dimensions, in shuffled order: the FUSELOC authors' reduction.

    Their code seeds numpy's legacy global generator with ``seed`` and shuffles ``arange(G)`` in place; the
    legacy ``RandomState`` gives the same permutation without touching numpy's global state.
    """
    if out_dim > global_dim:
        raise InputError(f"cannot select {out_dim} of {global_dim} global dimensions")
    order = np.arange(global_dim)
    np.random.RandomState(seed).shuffle(order)
    projection = np.zeros((global_dim, out_dim), np.float32)
    projection[order[:out_dim], np.arange(out_dim)] = 1.0
    return projection


def gaussian_projection(global_dim: int, out_dim: int, seed: int) -> np.ndarray:
    """A (G, out_dim) Gaussian random projection, scaled to preserve norms in expectation."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((global_dim, out_dim)) / np.sqrt(out_dim)).astype(np.float32)


class Fusion(nn.Module):
    """Interface of every fusion. Subclasses implement :meth:`reduce_global` and :meth:`fuse`.

    Args:
        local_dim: D, dimension of the local descriptors.
        global_dim: G, dimension of the global descriptors.
    """

    def __init__(self, local_dim: int, global_dim: int):
        super().__init__()
        self.local_dim = local_dim
        self.global_dim = global_dim

    @property
    def out_dim(self) -> int:
        return self.local_dim

    def fit(self, global_db: np.ndarray, local_sample: np.ndarray | None = None,
            global_other: np.ndarray | None = None, same_place: np.ndarray | None = None) -> None:
        """Data-driven initialisation from the database (e.g. PCA). Default: nothing to fit.

        Args:
            global_db: (N, G) global descriptors of the map's (database) images.
            local_sample: (M, D) local descriptors of the map's observations.
            global_other: (K, G) global descriptors of other images of the map's places (re-rendered under
                other conditions, training queries); only fusions learned from them use them.
            same_place: (K,) row of ``global_db`` showing the same place as each row of ``global_other``
                (-1: none).
        """

    def regularization(self) -> Tensor:
        """Penalty added to the training loss (0 for a fusion without one)."""
        device, dtype = fusion_placement(self)
        return torch.zeros((), device=device, dtype=dtype)

    def reduce_global(self, global_desc: Tensor) -> Tensor:
        """[B x G] global descriptors -> [B x D] per-image part of the fusion."""
        raise NotImplementedError

    def fuse(self, local_desc: Tensor, reduced_global: Tensor) -> Tensor:
        """[N x D] local descriptors and [N x D] (or [1 x D]) reduced globals -> [N x out_dim] fused."""
        raise NotImplementedError

    def forward(self, local_desc: Tensor, global_desc: Tensor) -> Tensor:
        return self.fuse(local_desc, self.reduce_global(global_desc))

    def check_dims(self, local_dim: int, global_dim: int, where: str = "") -> None:
        if local_dim != self.local_dim or global_dim != self.global_dim:
            raise InputError(
                f"descriptor dimension mismatch{' in ' + where if where else ''}: fusion expects local "
                f"{self.local_dim}-D and global {self.global_dim}-D, got {local_dim}-D and {global_dim}-D"
            )


class FixedFusion(Fusion):
    """A fixed fusion ``λ·local + (1-λ)·R(global)``.

    The defaults are fuseloc's operating point, ``R(g) = normalize(Pᵀ(g - μ))`` with a PCA fitted on the
    database; ``reduction="shuffle", normalize_reduced=False`` is the FUSELOC authors' exact fusion.

    Args:
        local_dim: D.
        global_dim: G.
        lam: λ, weight of the local descriptor in [0, 1]; 1 is local-only matching.
        reduction: how the global descriptor is brought to D dimensions: ``pca`` (fitted on the database),
            ``random`` (random coordinate selection), ``gaussian`` (random Gaussian projection) or ``shuffle``
            (the FUSELOC authors' reduction: the first D of a seeded legacy-numpy shuffle of the dimensions).
        normalize_reduced: L2-normalise the reduced global descriptor so both parts have unit norm. The
            authors do not: their reduced part keeps the global descriptor's scale (norm about sqrt(D/G)).
        seed: seed of the random reductions.
    """

    def __init__(
        self,
        local_dim: int = 128,
        global_dim: int = 4096,
        lam: float = 0.5,
        reduction: Reduction = "pca",
        normalize_reduced: bool = True,
        seed: int = 0,
    ):
        super().__init__(local_dim, global_dim)
        if not 0.0 <= lam <= 1.0:
            raise InputError(f"lam must be in [0, 1], got {lam}")
        self.lam = lam
        self.reduction = reduction
        self.normalize_reduced = normalize_reduced
        self.seed = seed
        self.register_buffer("global_mean", torch.zeros(global_dim))
        self.register_buffer("projection", torch.zeros(global_dim, local_dim))
        if reduction == "random":
            self.projection.copy_(torch.from_numpy(random_selection(global_dim, local_dim, seed)))
        elif reduction == "gaussian":
            self.projection.copy_(torch.from_numpy(gaussian_projection(global_dim, local_dim, seed)))
        elif reduction == "shuffle":
            self.projection.copy_(torch.from_numpy(shuffled_selection(global_dim, local_dim, seed)))
        elif reduction != "pca":
            raise InputError(f"unknown reduction {reduction!r} (pca, random, gaussian, shuffle)")

    def fit(self, global_db: np.ndarray, local_sample: np.ndarray | None = None,
            global_other: np.ndarray | None = None, same_place: np.ndarray | None = None) -> None:
        if self.reduction == "pca":
            self.check_dims(self.local_dim, global_db.shape[1], "PCA fit")
            mean, projection = pca_projection(global_db, self.local_dim)
            self.global_mean.copy_(torch.from_numpy(mean))
            self.projection.copy_(torch.from_numpy(projection))

    def reduce_global(self, global_desc: Tensor) -> Tensor:
        centered = global_desc - self.global_mean if self.reduction == "pca" else global_desc
        reduced = centered @ self.projection
        if self.normalize_reduced:
            reduced = nn.functional.normalize(reduced, dim=-1)
        return reduced

    def fuse(self, local_desc: Tensor, reduced_global: Tensor) -> Tensor:
        return self.lam * local_desc + (1.0 - self.lam) * reduced_global


def _logit(p: float) -> float:
    return float(np.log(p / (1.0 - p)))


class LearnedFusion(Fusion):
    """A fusion whose weighting and reductions are learned by metric learning (``train.py``).

    ``f(l, g) = normalize(λ·a ⊙ (A·l) + (1-λ)·b(r) ⊙ r)``, with ``r = normalize(Pᵀ(g - μ))``:

    - ``P`` (G x D) projects the global descriptor to the local dimension. :meth:`fit` initialises it (and the
      mean μ) with the learned whitening of :func:`whitening_projection` when it is given images of the map's
      places (``init="whitening"``; train.py's DataModule groups every cross-condition image with the map image
      showing the same place: a rendering with its source, a real query with the map image sharing most of its
      points): what changes between a place's images under different light is removed, what separates places
      kept. Without pairs, or with ``init="pca"``, it is PCA of the database, the reduction
      FixedFusion uses, so training starts from the paper's fusion at λ = ``init_lam``.
    - ``λ = sigmoid(·)`` is one learned scalar; ``a`` and ``b`` are per-dimension gates in (0, 2) that start
      at 1. ``b`` may also depend on the image (``conditioned_gate``: an affine map of ``r``), which lets the
      fusion lean on the global part more for some images than for others.
    - ``A`` (D x D, optional, starts at the identity) re-projects the local descriptor.
    - The output is L2-normalised so that query and map descriptors stay comparable whatever the weights.

    Everything per image (``P``, the conditioned gate, λ) runs in :meth:`reduce_global`; per keypoint
    :meth:`fuse` costs an elementwise product and sum plus ``A·l`` when ``project_local`` is set.

    Args:
        local_dim: D.
        global_dim: G.
        init_lam: λ before training, in (0, 1).
        per_dim_gate: learn the per-dimension gates ``a`` and ``b``.
        conditioned_gate: make ``b`` depend on the image's reduced global descriptor.
        project_local: learn the D x D local projection ``A``.
        train_projection: learn ``P`` by gradient descent; off keeps the projection :meth:`fit` found.
        projection_decay: weight of the penalty ``‖P - P_0‖²`` (and ``‖A - I‖²`` with ``project_local``) that
            keeps the learned projections near their initialisation ``P_0`` (:meth:`regularization`).
        normalize_output: L2-normalise the fused descriptor.
        init: how :meth:`fit` initialises ``P``: ``whitening`` (learned from same-place pairs when there are
            any, else PCA) or ``pca``.
        whitening_shrinkage: shrinkage of the within-place scatter toward the identity (see
            :func:`whitening_projection`).

    The defaults start ``P`` from the learned whitening and then learn λ, the per-dimension gates and ``P``
    (pulled back toward its start by ``projection_decay``): on the embedded town's validation queries the
    whitening is what moves night recall (``benchmarks/ablate_fusion.py``); trained on same-light database images
    alone (no pairs, PCA start) the learned projection fits their photometry instead of what separates places.
    The image-conditioned gate and the local projection are opt-in.
    """

    def __init__(
        self,
        local_dim: int = 128,
        global_dim: int = 4096,
        init_lam: float = 0.5,
        per_dim_gate: bool = True,
        conditioned_gate: bool = False,
        project_local: bool = False,
        train_projection: bool = True,
        projection_decay: float = 0.01,
        normalize_output: bool = True,
        init: Literal["pca", "whitening"] = "whitening",
        whitening_shrinkage: float = 0.1,
    ):
        super().__init__(local_dim, global_dim)
        if init not in ("pca", "whitening"):
            raise InputError(f"unknown init {init!r} (pca, whitening)")
        if not 0.0 <= whitening_shrinkage <= 1.0:
            raise InputError(f"whitening_shrinkage must be in [0, 1], got {whitening_shrinkage}")
        self.init = init
        self.whitening_shrinkage = whitening_shrinkage
        if not 0.0 < init_lam < 1.0:
            raise InputError(f"init_lam must be in (0, 1), got {init_lam}")
        self.init_lam = init_lam
        self.per_dim_gate = per_dim_gate
        self.conditioned_gate = conditioned_gate
        self.project_local = project_local
        self.train_projection = train_projection
        if projection_decay < 0:
            raise InputError(f"projection_decay must be >= 0, got {projection_decay}")
        self.projection_decay = projection_decay
        self.normalize_output = normalize_output
        self.lam_logit = nn.Parameter(torch.tensor(_logit(init_lam)))
        self.register_buffer("global_mean", torch.zeros(global_dim))
        self.register_buffer("fitted", torch.tensor(False))
        self.global_projection = nn.Parameter(torch.zeros(global_dim, local_dim), requires_grad=train_projection)
        # the projection fit() found (whitening or PCA): what projection_decay pulls a learned P back to
        self.register_buffer("initial_projection", torch.zeros(global_dim, local_dim))
        if per_dim_gate:
            self.local_gate_logit = nn.Parameter(torch.zeros(local_dim))
            self.global_gate_logit = nn.Parameter(torch.zeros(local_dim))
        if conditioned_gate:
            # Starts as the zero map: training begins exactly at the unconditioned fusion.
            self.gate_condition = nn.Linear(local_dim, local_dim)
            nn.init.zeros_(self.gate_condition.weight)
            nn.init.zeros_(self.gate_condition.bias)
        if project_local:
            self.local_projection = nn.Parameter(torch.eye(local_dim))

    @property
    def is_fitted(self) -> bool:
        return bool(self.fitted)

    @property
    def lam(self) -> Tensor:
        """The current scalar λ (weight of the local part)."""
        return torch.sigmoid(self.lam_logit)

    def fit(self, global_db: np.ndarray, local_sample: np.ndarray | None = None,
            global_other: np.ndarray | None = None, same_place: np.ndarray | None = None) -> None:
        """Initialise ``P`` and μ: the learned whitening of the global descriptors when ``init`` asks for it and
        same-place pairs are given (``global_other[k]`` and ``global_db[same_place[k]]``), else PCA of the database
        global descriptors (N, G)."""
        self.check_dims(self.local_dim, global_db.shape[1], "PCA fit")
        pairs = np.zeros(0, np.int64) if same_place is None else np.flatnonzero(np.asarray(same_place) >= 0)
        if self.init == "whitening" and global_other is not None and len(pairs):
            self.check_dims(self.local_dim, global_other.shape[1], "whitening fit")
            # place of a map image: its own row; of another image: the map image it shows the same place as
            places = np.r_[np.arange(len(global_db)), np.asarray(same_place)[pairs]]
            mean, projection = whitening_projection(np.concatenate([global_db, global_other[pairs]]), places,
                                                    self.local_dim, shrinkage=self.whitening_shrinkage)
            logger.info("global projection: learned whitening from %d images of %d map places", len(pairs),
                        len(np.unique(places[len(global_db):])))
        else:
            if self.init == "whitening":
                logger.info("global projection: PCA (no same-place pairs to learn the whitening from)")
            mean, projection = pca_projection(global_db, self.local_dim)
        with torch.no_grad():
            self.global_mean.copy_(torch.from_numpy(mean))
            self.global_projection.copy_(torch.from_numpy(projection))
            self.initial_projection.copy_(torch.from_numpy(projection))
            self.fitted.fill_(True)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        # Fusions saved before initial_projection existed: their projection was never learned away from the PCA.
        if prefix + "initial_projection" not in state_dict and prefix + "global_projection" in state_dict:
            state_dict[prefix + "initial_projection"] = state_dict[prefix + "global_projection"]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def regularization(self) -> Tensor:
        """``projection_decay`` x (‖P - P_pca‖² + ‖A - I‖²) over the projections being learned (0 when none is)."""
        total = torch.zeros((), dtype=self.lam_logit.dtype, device=self.lam_logit.device)
        if self.projection_decay == 0:
            return total
        if self.train_projection:
            total = total + (self.global_projection - self.initial_projection).square().sum()
        if self.project_local:
            eye = torch.eye(self.local_dim, dtype=total.dtype, device=total.device)
            total = total + (self.local_projection - eye).square().sum()
        return self.projection_decay * total

    def local_gate(self) -> Tensor:
        """[D] per-dimension weights of the local part (all 1 without ``per_dim_gate``)."""
        if self.per_dim_gate:
            return 2.0 * torch.sigmoid(self.local_gate_logit)
        return torch.ones(self.local_dim, dtype=self.lam_logit.dtype, device=self.lam_logit.device)

    def global_gate(self, reduced: Tensor) -> Tensor:
        """[B x D] per-image, per-dimension weights of the global part."""
        logit = torch.zeros_like(reduced)
        if self.per_dim_gate:
            logit = logit + self.global_gate_logit
        if self.conditioned_gate:
            logit = logit + self.gate_condition(reduced)
        return 2.0 * torch.sigmoid(logit)

    def reduce_global(self, global_desc: Tensor) -> Tensor:
        reduced = nn.functional.normalize((global_desc - self.global_mean) @ self.global_projection, dim=-1)
        return (1.0 - self.lam) * self.global_gate(reduced) * reduced

    def fuse(self, local_desc: Tensor, reduced_global: Tensor) -> Tensor:
        local = local_desc @ self.local_projection if self.project_local else local_desc
        fused = (self.lam * self.local_gate()) * local + reduced_global
        return nn.functional.normalize(fused, dim=-1) if self.normalize_output else fused


def fusion_init_args(fusion: Fusion) -> dict:
    """Constructor arguments of a fusion, read back from its same-named attributes."""
    params = inspect.signature(type(fusion).__init__).parameters
    return {name: getattr(fusion, name) for name in params if name != "self" and hasattr(fusion, name)}


def fusion_class_path(fusion: Fusion) -> str:
    return f"{type(fusion).__module__}.{type(fusion).__qualname__}"


def fusion_class(class_path: str) -> type[Fusion]:
    """The class named by ``class_path`` (raises ImportError or AttributeError when there is none)."""
    module_name, _, class_name = class_path.rpartition(".")
    return getattr(importlib.import_module(module_name), class_name)


def instantiate_fusion(class_path: str, init_args: dict, state: dict[str, np.ndarray] | None = None) -> Fusion:
    """A fusion from its class path, constructor arguments and (optionally) state, in eval mode."""
    fusion = fusion_class(class_path)(**init_args)
    if state is not None:
        fusion.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()})
    return fusion.eval()


# ------------------------------------------------------------------------------- device and dtype placement
# Maps, queries and caches are numpy on the host; a fusion may live on any device in any float dtype (a CUDA
# fusion in evaluate.py, a trained one in a Lightning module, float64 under "64-true"). Every caller crosses
# that boundary through these two functions, so none of them builds CPU tensors or calls .numpy() on its own.


def fusion_placement(fusion: nn.Module) -> tuple[torch.device, torch.dtype]:
    """(device, floating dtype) of a fusion's first floating parameter or buffer; CPU float32 for one with none."""
    for tensor in (*fusion.parameters(), *fusion.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.float32


def to_fusion(fusion: nn.Module, array: np.ndarray | Tensor) -> Tensor:
    """``array`` (numpy, or a tensor anywhere) as a tensor on the fusion's device, in its floating dtype."""
    device, dtype = fusion_placement(fusion)
    if not isinstance(array, Tensor):
        array = np.asarray(array)
        # torch.from_numpy warns on read-only arrays (h5py, memory maps); the move below copies anyway.
        array = torch.from_numpy(array if array.flags.writeable else array.copy())
    return array.to(device=device, dtype=dtype)


def to_numpy(tensor: Tensor) -> np.ndarray:
    """A fusion's output back on the host as numpy (from any device, detached from autograd)."""
    return tensor.detach().cpu().numpy()


def fuse_numpy(fusion: Fusion, local_desc: np.ndarray, global_desc: np.ndarray | Tensor) -> np.ndarray:
    """Fuse one image's keypoints wherever the fusion lives: numpy in, numpy out.

    Args:
        local_desc: [N x D] local descriptors of one image.
        global_desc: its [G] (or [1 x G]) global descriptor.

    Returns:
        [N x out_dim] fused descriptors, in the fusion's dtype.
    """
    reduced = fusion.reduce_global(to_fusion(fusion, global_desc).reshape(1, -1))
    return to_numpy(fusion.fuse(to_fusion(fusion, local_desc), reduced))
