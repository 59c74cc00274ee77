"""Every setting has one home and one default: the window, preprocessing and optimizer records. The training module
and data module take their defaults from the records (not from literals of their own), trial steps use training's
optimizer, and the shipped configs state only what differs from the defaults."""

from __future__ import annotations

import ast
import inspect
import textwrap
from dataclasses import fields

import pytest
import yaml

from medseg.data.transforms import Preprocessing
from medseg.planning.step import training_setup
from medseg.recipe import OptimizerSettings, Recipe, Window
from medseg.training.command import main
from medseg.training.datamodule import SegmentationDataModule
from medseg.training.module import SegmentationModule
from tests.helpers.cli import REPO, run_main
from tests.helpers.stand_ins import TINY_UNET

DATA_OPTIONS = {name: f"Preprocessing.{name}" for name in ("spacing", "ct_window", "ct_mean", "ct_std", "crop_foreground")}
RECORDS = {"Window": Window, "OptimizerSettings": OptimizerSettings, "Preprocessing": Preprocessing}


def _written_defaults(function) -> dict[str, str]:
    """Return each parameter's default as written in the source of ``function``."""
    arguments = ast.parse(textwrap.dedent(inspect.getsource(function))).body[0].args
    return {arg.arg: ast.unparse(default) for arg, default in zip(arguments.args[-len(arguments.defaults):], arguments.defaults)}


def _record_default(reference: str):
    record, name = reference.split(".")
    return next(f.default for f in fields(RECORDS[record]) if f.name == name)


def test_data_options_take_their_defaults_from_the_records():
    written = _written_defaults(SegmentationDataModule.__init__)
    assert {name: written[name] for name in DATA_OPTIONS} == DATA_OPTIONS  # a literal here would be a second copy of the default
    signature = inspect.signature(SegmentationDataModule.__init__)
    assert {name: signature.parameters[name].default for name in DATA_OPTIONS} == {name: _record_default(ref) for name, ref in DATA_OPTIONS.items()}


def test_the_module_takes_the_window_and_optimizer_records_with_their_defaults():
    written = _written_defaults(SegmentationModule.__init__)
    assert (written["window"], written["optimizer"]) == ("Window()", "OptimizerSettings()")  # not a copy of a default
    module = SegmentationModule(network_kwargs=TINY_UNET, window=Window(overlap=0.5), optimizer=OptimizerSettings(learning_rate=0.01))
    assert module.recipe.window == Window(overlap=0.5) and module.optimizer_settings.learning_rate == 0.01
    rebuilt = SegmentationModule(**module.hparams)  # as a module rebuilt from a checkpoint's hyper-parameters (plain data)
    assert (rebuilt.recipe.window, rebuilt.optimizer_settings) == (module.recipe.window, module.optimizer_settings)


def test_trial_steps_step_with_the_optimizer_training_builds():
    recipe = Recipe("UNet", TINY_UNET, ("ct",), ("background", "organ"), (16, 16, 16))
    setup = training_setup(recipe)
    [group] = setup.make_optimizer(setup.net.parameters()).param_groups
    module = SegmentationModule(network_kwargs=TINY_UNET, out_channels=2)
    assert module.optimizer_settings == OptimizerSettings()
    assert (group["lr"], group["weight_decay"]) == (OptimizerSettings.learning_rate, OptimizerSettings.weight_decay)


def _leaves(mapping: dict, prefix: tuple[str, ...] = ()):
    for key, value in mapping.items():
        if isinstance(value, dict) and value:
            yield from _leaves(value, (*prefix, key))
        else:
            yield (*prefix, key), value


def _value_at(mapping: dict, path: tuple[str, ...]):
    for key in path:
        if not isinstance(mapping, dict) or key not in mapping:
            return KeyError  # a key the defaults do not have: never equal to a config's value
        mapping = mapping[key]
    return mapping


@pytest.mark.parametrize("config", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_shipped_configs_state_only_what_differs_from_the_defaults(config, capsys):
    code, printed, err = run_main(main, ["--print_config"], capsys)
    assert code == 0, err
    defaults = yaml.safe_load(printed)
    stated = yaml.safe_load((REPO / "configs" / config).read_text())
    repeated = [".".join(path) for path, value in _leaves(stated) if _value_at(defaults, path) == value]
    assert repeated == []
