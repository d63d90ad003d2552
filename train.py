"""Train a learned fusion (metric learning over 2D-3D correspondences) with LightningCLI.

    python train.py fit                                         # embedded town, configs/base.yaml
    python train.py fit --config configs/data/strecha_fountain.yaml --config configs/features/sift4096.yaml --config configs/train/strecha_fountain.yaml
    python train.py fit --trainer.devices 2 --trainer.strategy ddp
    python train.py fit --trainer.accelerator gpu --trainer.devices 1              # CUDA (fusion, loss, validation)
    python train.py fit --data.global_features fuseloc.data.extractors.MegaLoc   # any GlobalExtractor, not only VLAD
    python train.py fit --print_config                          # every option with its default

configs/base.yaml is always read first; ``--config`` files state only what differs, later ones over earlier
ones. ``data`` has evaluate.py's keys (``data.reader``, ``data.local_features``, ``data.global_features``,
``data.output_dir``...), so the snippets under configs/data and configs/features serve both tools. The
checkpoint (``<log_dir>/checkpoints/*.ckpt``) evaluates next to the fixed fusions with
``python evaluate.py --checkpoint path.ckpt`` and the same dataset and feature settings (the same snippets).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from lightning.pytorch.cli import LightningCLI

from fuseloc.data.datamodule import FuseLocDataModule
from fuseloc.errors import InputError
from fuseloc.models.module import FuseLocModule

BASE_CONFIG = Path(__file__).resolve().parent / "configs" / "base.yaml"


class FuseLocCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:  # noqa: ANN001
        # Descriptor dimensions follow from the feature settings; the fusion never states them twice.
        parser.link_arguments("data.local_dim", "model.fusion.init_args.local_dim", apply_on="instantiate")
        parser.link_arguments("data.global_dim", "model.fusion.init_args.global_dim", apply_on="instantiate")
        parser.add_argument("--log_level", default="INFO", help="logging level")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        logging.basicConfig(level=config.pop("log_level", "INFO"),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        place_run(config)


#: configs/base.yaml's logger save_dir; left at that, runs go to ``<data.output_dir>/train`` instead
DEFAULT_SAVE_DIR = Path("outputs/train")


def place_run(config) -> None:  # noqa: ANN001 (jsonargparse Namespace of the subcommand)
    """Put the run (logs and checkpoints) under ``<data.output_dir>/train/<name>/version_N`` unless the config
    names another save_dir, and make ``--ckpt_path last`` resume the latest run of that experiment: Lightning looks
    for last.ckpt only in the new run's own version folder, which a new run never has."""
    logger_config = config.get("trainer", {}).get("logger") if hasattr(config, "get") else None
    init = logger_config.get("init_args") if hasattr(logger_config, "get") else None
    if init is None or init.get("save_dir") is None:
        return
    if Path(init.save_dir) == DEFAULT_SAVE_DIR and config.get("data", {}).get("output_dir") is not None:
        init.save_dir = str(Path(config.data.output_dir) / "train")
    if config.get("ckpt_path") != "last" or init.get("version") is not None:
        return
    experiment = Path(init.save_dir) / (init.get("name") or "lightning_logs")
    version = latest_resumable_version(experiment)
    log = logging.getLogger("fuseloc.train")
    if version is None:
        log.warning("--ckpt_path last: no run of %s has a last.ckpt; starting a new run", experiment)
        config.ckpt_path = None
        return
    init.version = version
    log.info("--ckpt_path last: resuming %s", experiment / f"version_{version}")


def latest_resumable_version(experiment: Path) -> int | None:
    """The highest N with ``<experiment>/version_N/checkpoints/last.ckpt``; None when no run has one."""
    versions = [int(d.name.split("_", 1)[1]) for d in experiment.glob("version_*")
                if d.name.split("_", 1)[1].isdigit() and (d / "checkpoints" / "last.ckpt").is_file()]
    return max(versions, default=None)


def cli_main(args: list[str] | None = None, run: bool = True) -> FuseLocCLI:
    default_files = [str(BASE_CONFIG)]
    parser_kwargs = {"default_config_files": default_files}
    if run:
        parser_kwargs = {sub: {"default_config_files": default_files} for sub in ("fit", "validate", "test", "predict")}
    return FuseLocCLI(FuseLocModule, FuseLocDataModule, args=args, run=run, parser_kwargs=parser_kwargs,
                      save_config_kwargs={"overwrite": True})


def main() -> int:
    try:
        cli_main()
    except InputError as exc:
        # Bad data or config: one line naming the file, not a traceback through Lightning.
        logging.getLogger("fuseloc.train").error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
