"""What the training options a command line gives (``--config`` files and ``--section.key value`` overrides) train on,
for commands that need a dataset or a recipe and not a Trainer (``medseg.plan``, ``medseg.memory``).

The options are read by the training command's own parser (``parse_training_options``), so an option training
does not know, or a value it would refuse, is refused here too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medseg.data.demo import cache_folder, ensure_demo_dataset
from medseg.data.formats import DatasetSpec, read_dataset
from medseg.model.networks import network_kwargs_or_default
from medseg.recipe import Recipe


def dataset_and_cache(options: dict[str, Any]) -> tuple[DatasetSpec, Path]:
    """Return the dataset the options (``parse_training_options``) train on (the built-in demo when ``data.root`` is
    null) and the cache folder."""
    data = options["data"]
    cache_dir = cache_folder(data["cache_dir"])
    return read_dataset(data["root"] if data["root"] else ensure_demo_dataset(cache_dir)), cache_dir


def recipe_from_options(options: dict[str, Any]) -> Recipe:
    """Return the recipe training would start from: network, its arguments and patch, the dataset's channels and classes."""
    model, data = options["model"], options["data"]
    spec, _ = dataset_and_cache(options)
    network = model["network"]
    return Recipe(network, network_kwargs_or_default(network, model["network_kwargs"]), spec.channel_names, spec.class_names, tuple(data["patch_size"]))
