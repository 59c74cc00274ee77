"""The largest tensor a piece of code allocates, counted by a dispatch mode: a cheap, deterministic stand-in for its
peak memory where only the shape of the answer matters (is there a buffer of every class over the whole scan?)."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LargestTensor(TorchDispatchMode):
    """While active, records in ``bytes`` the size of the largest tensor storage any torch operation returns."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor) and value.device.type != "meta":
                self.bytes = max(self.bytes, value.untyped_storage().nbytes())
        return out
