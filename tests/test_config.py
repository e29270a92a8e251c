"""Config loading: defaults, extends, --set overrides, and errors that name the bad key."""

from __future__ import annotations

import os

import pytest

from faextract.config import load_config, parse_overrides
from faextract.errors import ConfigError
from faextract.paths import CONFIG_DIR


def test_defaults_and_bundled_configs_load():
    cfg = load_config()
    assert cfg.model.cell == "faconvlstm" and cfg.train.epochs == 10
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        load_config(path)  # every shipped config is valid


def test_extends_and_overrides(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("model: {filters: 8, cell_options: {se: false}}\ntrain: {epochs: 2}\n")
    child = tmp_path / "child.yaml"
    child.write_text("extends: base.yaml\ntrain: {lr: 0.01}\n")
    cfg = load_config(child, ["train.epochs=5", "model.cell=minconvgru", "tiles.tile=[8, 16]",
                              "model.cell_options={scan: sequential}"])  # fmt: skip
    assert cfg.model.filters == 8 and cfg.model.cell_options == {"scan": "sequential"}
    assert cfg.train.lr == 0.01 and cfg.train.epochs == 5
    assert cfg.model.cell == "minconvgru" and cfg.tiles.tile == [8, 16]
    assert load_config(child).model.cell_options == {"se": False}
    # The inherited FAConvLSTM option does not fit another cell: refused by name.
    with pytest.raises(ConfigError, match="'se' is not an option of the convlstm cell"):
        load_config(child, ["model.cell=convlstm"])


def test_unknown_key_lists_valid_ones(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("train: {epoch: 3}\n")
    with pytest.raises(
        ConfigError, match=r"unknown config key 'train.epoch'; valid keys here: .*train.epochs"
    ):
        load_config(path)
    with pytest.raises(ConfigError, match="unknown config key 'modle'"):
        load_config(None, ["modle.cell=convlstm"])


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.epochs=many", "expected an integer"),
        ("train.deterministic=3", "expected true or false"),
        ("model.cell=5", "expected a string"),
        ("novalue", "expected KEY=VALUE"),
        ("data.climatology_period=recent", "data.climatology_period: expected train, all or"),
        ("data.climatology_period=[2020,1991]", "a START no later than its END"),
        ("data.climatology_period=[1991-13,2020]", "month 1-12"),
        ("data.climatology_period=[1991]", "expected train, all or"),
    ],
)
def test_bad_values(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_parse_overrides_nests():
    assert parse_overrides(["a.b.c=1", "a.d=x"]) == {"a": {"b": {"c": 1}, "d": "x"}}


def test_bad_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_default_yaml_is_the_config_defaults():
    """configs/default.yaml documents every key with its default: the two never drift apart."""
    import yaml

    from faextract.config import Config

    with open(CONFIG_DIR / "default.yaml") as fh:
        documented = yaml.safe_load(fh)
    assert documented == Config().to_dict()


def test_relative_data_paths_resolve_against_the_config_file(tmp_path, monkeypatch):
    """The library resolves paths as the command line does: ``train(load_config(f))`` and
    ``faextract train --config f`` read the same files, from any working directory."""
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "cube.nc").write_bytes(b"")
    (folder / "stats.nc").write_bytes(b"")
    cfg_file = folder / "run.yaml"
    cfg_file.write_text("data:\n  paths: [cube.nc]\n  stats: stats.nc\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(cfg_file)
    assert cfg.data.paths == [str(folder.resolve() / "cube.nc")]
    assert cfg.data.stats == str(folder.resolve() / "stats.nc")
    # a bundled config by name, its sample path found wherever faextract is installed
    assert os.path.exists(load_config("sample").data.paths[0])


def test_a_climatology_period_of_dates_travels_as_text():
    """YAML reads an unquoted date as a date object; the config goes into JSON (checkpoints,
    stores), so the period is kept as text."""
    import json

    cfg = load_config(None, ["data.climatology_period=[1991-01-01,2020-12-31]"])
    assert cfg.data.climatology_period == ["1991-01-01", "2020-12-31"]
    assert "1991-01-01" in json.dumps(cfg.to_dict())
    assert load_config(None, ["data.climatology_period=[1991,2020]"]).data.climatology_period == [1991, 2020]
