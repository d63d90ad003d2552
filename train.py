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
