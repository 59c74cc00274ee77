"""The training options a command line gives (``--config`` files and ``--section.key value`` overrides), read as
plain data, for commands that need a dataset or a recipe and not a Trainer (``medseg.plan``, ``medseg.memory``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from medseg.data.demo import default_cache_dir, ensure_demo_dataset
from medseg.data.formats import DatasetSpec, read_dataset
from medseg.data.sampling import DEFAULT_PATCH_SIZE
from medseg.errors import MedsegError
from medseg.model.networks import network_kwargs_or_default
from medseg.recipe import Recipe


def _read_config(path: str) -> dict[str, Any]:
    file = Path(path)
    if not file.is_file():
        raise MedsegError(f"config file {file} does not exist")
    try:
        options = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as err:
        raise MedsegError(f"config file {file} is not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(options, dict):
        raise MedsegError(f"config file {file} is not a mapping of sections (trainer, model, data)")
    return options


def read_training_options(args: list[str]) -> dict[str, Any]:
    """Return the options as nested plain data: each ``--config`` file's sections in order, then every
    ``--section.key=value`` (or ``--section.key value``) over them, values read as YAML as the training CLI reads them."""
    options: dict[str, Any] = {}
    words = list(args)
    while words:
        word = words.pop(0)
        if not word.startswith("--"):
            raise MedsegError(f"unexpected argument {word!r}: options are --config FILE and --section.key VALUE")
        name, has_value, value = word[2:].partition("=")
        if not has_value:
            if not words:
                raise MedsegError(f"option --{name} needs a value")
            value = words.pop(0)
        if name == "config":
            for section, settings in _read_config(value).items():
                options[section] = {**options.get(section, {}), **settings} if isinstance(settings, dict) else settings
            continue
        section, _, key = name.partition(".")
        if not key:
            raise MedsegError(f"unknown option --{name}: training options are --section.key VALUE (python -m medseg.train --help)")
        options.setdefault(section, {})[key] = yaml.safe_load(value)
    return options


def dataset_and_cache(options: dict[str, Any]) -> tuple[DatasetSpec, Path]:
    """Return the dataset the options train on (the built-in demo when ``data.root`` is null) and the cache folder."""
    data = options.get("data") or {}
    cache_dir = Path(data["cache_dir"]) if data.get("cache_dir") else default_cache_dir()
    return read_dataset(data["root"] if data.get("root") else ensure_demo_dataset(cache_dir)), cache_dir


def recipe_from_options(options: dict[str, Any]) -> Recipe:
    """Return the recipe training would start from: network, its arguments and patch, the dataset's channels and classes."""
    model, data = options.get("model") or {}, options.get("data") or {}
    spec, _ = dataset_and_cache(options)
    network = model.get("network", "UNet")
    patch = data.get("patch_size") or DEFAULT_PATCH_SIZE
    return Recipe(network, network_kwargs_or_default(network, model.get("network_kwargs")), spec.channel_names, spec.class_names, tuple(patch))
