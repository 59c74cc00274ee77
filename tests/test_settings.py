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
from medseg.planning.step import OptimizerSettings, training_setup
from medseg.recipe import Recipe, Window
from medseg.training.command import main
from medseg.training.datamodule import SegmentationDataModule
from medseg.training.module import SegmentationModule
from tests.helpers.cli import REPO, run_main
from tests.helpers.stand_ins import TINY_UNET

# the training options that are a record's fields under another name
MODULE_OPTIONS = {
    "sw_overlap": "Window.overlap",
    "sw_gaussian": "Window.gaussian",
    "sw_batch_size": "Window.batch_size",
    "learning_rate": "OptimizerSettings.learning_rate",
    "weight_decay": "OptimizerSettings.weight_decay",
}
DATA_OPTIONS = {name: f"Preprocessing.{name}" for name in ("spacing", "ct_window", "ct_mean", "ct_std", "crop_foreground")}
RECORDS = {"Window": Window, "OptimizerSettings": OptimizerSettings, "Preprocessing": Preprocessing}


def _written_defaults(function) -> dict[str, str]:
    """Return each parameter's default as written in the source of ``function``."""
    arguments = ast.parse(textwrap.dedent(inspect.getsource(function))).body[0].args
    return {arg.arg: ast.unparse(default) for arg, default in zip(arguments.args[-len(arguments.defaults):], arguments.defaults)}


def _record_default(reference: str):
    record, name = reference.split(".")
    return next(f.default for f in fields(RECORDS[record]) if f.name == name)


@pytest.mark.parametrize(("function", "options"), [(SegmentationModule.__init__, MODULE_OPTIONS), (SegmentationDataModule.__init__, DATA_OPTIONS)])
def test_training_options_take_their_defaults_from_the_records(function, options):
    written = _written_defaults(function)
    assert {name: written[name] for name in options} == options  # a literal here would be a second copy of the default
    signature = inspect.signature(function)
    assert {name: signature.parameters[name].default for name in options} == {name: _record_default(ref) for name, ref in options.items()}


def test_trial_steps_step_with_the_optimizer_training_builds():
    recipe = Recipe("UNet", TINY_UNET, ("ct",), ("background", "organ"), (16, 16, 16))
    setup = training_setup(recipe)
    [group] = setup.make_optimizer(setup.net.parameters()).param_groups
    module = SegmentationModule(network_kwargs=TINY_UNET, out_channels=2)
    assert module.optimizer_settings == OptimizerSettings()
    assert (group["lr"], group["weight_decay"]) == (OptimizerSettings.learning_rate, OptimizerSettings.weight_decay)
    assert SegmentationModule(learning_rate=0.01, network_kwargs=TINY_UNET).optimizer_settings.learning_rate == 0.01


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
