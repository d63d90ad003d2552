"""Every YAML under configs/ parses and instantiates with the CLI it is written for (nothing is run).

configs/eval: evaluate.py configs; configs/train and configs/base.yaml: train.py configs; configs/data and
configs/features: snippets of the ``data`` section that both tools read, combined with ``--config a --config b``
(jsonargparse has no includes). Every command a config's comments show is run through its tool's parser too.
"""

import re
import sys
from pathlib import Path

import pytest
import yaml
from fixtures.scripts import load_script

from fuseloc.data.datamodule import FuseLocDataModule
from fuseloc.errors import InputError
from fuseloc.models.module import FuseLocModule

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))
SNIPPET_DIRS = ("data", "features")
DATA_SNIPPETS = sorted((REPO / "configs" / "data").glob("*.yaml"))
FEATURE_SNIPPETS = sorted((REPO / "configs" / "features").glob("*.yaml"))


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def is_snippet(path: Path) -> bool:
    return path.parent.name in SNIPPET_DIRS and path.parent.parent.name == "configs"


def is_train_config(path: Path) -> bool:
    """train.py configs (LightningCLI: trainer/model/data-module keys) versus evaluate.py configs."""
    if path.parent.name == "eval":
        return False
    if path.parent.name == "train" or path.name == "base.yaml":
        return True
    content = yaml.safe_load(path.read_text()) or {}
    return bool({"trainer", "model", "seed_everything"} & set(content))


def documented_commands() -> list[tuple[str, tuple[str, ...]]]:
    """(tool, config files) of every ``python evaluate.py ...`` / ``python train.py fit ...`` line in the
    configs' comments, in order, without duplicates."""
    found: dict[tuple[str, tuple[str, ...]], None] = {}
    for path in CONFIGS:
        for line in path.read_text().splitlines():
            match = re.match(r"#\s+python (evaluate|train)\.py (?:fit )?(.*)", line)
            if match:
                found[(match[1], tuple(re.findall(r"--config (\S+)", match[2])))] = None
    return list(found)


def evaluate_init(paths: list[Path]) -> dict:
    """What evaluate.py builds from the configs (a constructor's InputError stays one InputError)."""
    evaluate = load_script("evaluate")
    parser = evaluate.build_parser()
    cfg = parser.parse_args([a for p in paths for a in ("--config", str(p))])
    cfg.pop("config", None)
    cfg.pop("log_level", None)
    return evaluate.instantiate(parser, cfg)


def train_cli(paths: list[Path]):  # noqa: ANN201 (a FuseLocCLI)
    cli = load_script("train").cli_main([a for p in paths for a in ("--config", str(p))], run=False)
    assert cli.model.fusion.local_dim == cli.datamodule.local_dim
    assert cli.model.fusion.global_dim == cli.datamodule.global_dim
    assert any(type(c).__name__ == "LocalizationValidation" for c in cli.trainer.callbacks)
    return cli


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Loggers and outputs resolve relative paths in tmp_path, never in the repository; $FUSELOC_DATA is set."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["train.py"])
    monkeypatch.setenv("FUSELOC_DATA", str(tmp_path))
    return tmp_path


def test_there_are_configs_of_every_kind():
    kinds = {"snippet" if is_snippet(p) else "train" if is_train_config(p) else "eval" for p in CONFIGS}
    assert kinds == {"snippet", "train", "eval"}
    assert DATA_SNIPPETS and FEATURE_SNIPPETS


@pytest.mark.parametrize("path", [p for p in CONFIGS if not is_snippet(p) and is_train_config(p)], ids=_rel)
def test_train_config_instantiates(path, in_tmp):
    train_cli([path])


@pytest.mark.parametrize("path", [p for p in CONFIGS if not is_snippet(p) and not is_train_config(p)], ids=_rel)
def test_eval_config_instantiates(path, in_tmp):
    try:
        init = evaluate_init([path])
    except InputError as exc:
        if "weights not found" not in str(exc):
            raise
        pytest.skip(f"parsed; a deep extractor's weight file is not on this machine ({exc})")
    assert init["data"].reader is not None


@pytest.mark.parametrize("path", [p for p in CONFIGS if is_snippet(p)], ids=_rel)
def test_snippet_says_only_data_and_shows_its_use(path):
    content = yaml.safe_load(path.read_text())
    assert set(content) == {"data"}, "a snippet sets only the data section, which both tools share"
    assert any(_rel(path) in configs for _, configs in documented_commands()), "its comment shows a command using it"


@pytest.mark.parametrize("data", DATA_SNIPPETS, ids=_rel)
@pytest.mark.parametrize("features", FEATURE_SNIPPETS, ids=_rel)
def test_snippets_compose_the_same_data_in_both_tools(data, features, in_tmp):
    evaluate_data = evaluate_init([data, features])["data"]
    datamodule = train_cli([data, features]).datamodule
    wanted = yaml.safe_load(data.read_text())["data"] | yaml.safe_load(features.read_text())["data"]
    for key in ("reader", "local_features"):
        # Each class gets its own defaults: nothing carried over from the default reader or extractor.
        a, b = getattr(evaluate_data, key), getattr(datamodule, key)
        assert type(a) is type(b) and type(a).__name__ == wanted[key]["class_path"].rsplit(".", 1)[1]
        assert vars(a) == vars(b)
    assert evaluate_data.output_dir == datamodule.output_dir == Path(wanted.get("output_dir", "outputs"))


def test_a_named_class_gets_its_own_defaults_in_both_tools(in_tmp):
    # jsonargparse carries a previous value's init_args over to a newly named class; a default instance would
    # hand Sift's max_keypoints (2048) to ALIKED (4096) and VLAD's num_clusters (32) to MegaLoc (64).
    snippet = in_tmp / "features.yaml"
    snippet.write_text("data:\n  local_features:\n    class_path: fuseloc.data.extractors.Aliked\n"
                       "  global_features:\n    class_path: fuseloc.data.extractors.NetVLAD\n")
    # Parsed, not instantiated: NetVLAD looks for its weight file when constructed.
    evaluate_cfg = load_script("evaluate").build_parser().parse_args(["--config", str(snippet)])
    train = load_script("train")

    class ParseOnly(train.FuseLocCLI):
        def instantiate_classes(self) -> None:
            pass

    train_cfg = ParseOnly(FuseLocModule, FuseLocDataModule, args=["--config", str(snippet)], run=False,
                          parser_kwargs={"default_config_files": [str(train.BASE_CONFIG)]}).config
    for cfg in (evaluate_cfg, train_cfg):
        assert cfg.data.local_features.init_args.max_keypoints == 4096
        assert cfg.data.global_features.init_args.num_clusters == 64


@pytest.mark.parametrize("command", documented_commands(), ids=lambda c: f"{c[0]}:{'+'.join(Path(p).stem for p in c[1])}")
def test_documented_command_instantiates(command, in_tmp):
    tool, configs = command
    paths = [REPO / p for p in configs]
    assert all(p.is_file() for p in paths), configs
    if tool == "train":
        train_cli(paths)
    else:
        evaluate_init(paths)


def test_train_cli_rejects_unknown_keys(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["train.py"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  learning_rate: 0.1\n")
    train = load_script("train")
    with pytest.raises(SystemExit):
        train.cli_main(["--config", str(bad)], run=False)
