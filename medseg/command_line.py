"""The parser of every argparse command (``CommandParser``), and the naming rule the commands share.

The rule: long options are spelled with underscores, as training's options (``--model.window.overlap``), nnU-Net's
and TotalSegmentator's are, and an option that sets a training setting is named after its key less ``model.``
(``medseg.infer --window.overlap`` is ``medseg.train --model.window.overlap``). What a command writes is
``-o/--output``, the scans it reads ``-i/--input`` and the model it reads ``--checkpoint``; training resumes with
``--ckpt_path``, Lightning's own name, and its ``--checkpoint.*`` options configure the best-checkpoint callback.
evaluate and postprocess read two folders, so they keep nnU-Net's ``--pred`` and ``--gt`` rather than one ``-i``.

Importing this module loads neither torch nor MONAI, so that ``--help`` answers without them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from medseg.errors import DEBUG_HELP

__all__ = ["CommandParser", "OLD_SPELLINGS_REMOVED_IN", "current_spellings"]

# The release that removes the old spellings (``old=``, ``rename``), which 0.1.0 replaced: they work through 0.2.x
OLD_SPELLINGS_REMOVED_IN = "0.3.0"


class CommandParser(argparse.ArgumentParser):
    """An argparse parser with medseg's conventions: no abbreviated options, ``--debug`` in the epilog, and the
    previous release's spellings still accepted until ``OLD_SPELLINGS_REMOVED_IN``, each with a one-line notice
    (``add_argument(..., old=...)``)."""

    def __init__(self, prog: str, description: str, epilog: str = "", **kwargs) -> None:
        super().__init__(prog=prog, description=description, epilog=f"{epilog}\n{DEBUG_HELP}".lstrip(), allow_abbrev=False, **kwargs)
        self.old_spellings: dict[str, list[str]] = {}

    def add_argument(self, *names: str, old: Sequence[str] = (), **kwargs) -> argparse.Action:
        """Add an option as argparse does; ``old`` are its names of the previous release."""
        action = super().add_argument(*names, **kwargs)
        for name in old:
            self.rename(name, action.option_strings[-1])
        return action

    def rename(self, old: str, *new: str) -> None:
        """Accept ``old`` for one more release as ``new`` (an option, and a value where the old one was a flag)."""
        self.old_spellings[old] = list(new)

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None):
        args = sys.argv[1:] if args is None else args
        return super().parse_known_args(current_spellings(args, self.old_spellings), namespace)


def current_spellings(args: Sequence[str], old_spellings: dict[str, list[str]]) -> list[str]:
    """Return ``args`` with every old spelling replaced by its current one, after one notice on stderr for each
    old spelling used ("medseg: --out is deprecated (removed in 0.3.0), use --output")."""
    current: list[str] = []
    noticed: set[str] = set()
    for arg in args:
        name, equals, value = arg.partition("=")
        new = old_spellings.get(name)
        if new is None:
            current.append(arg)
            continue
        if name not in noticed:
            print(f"medseg: {name} is deprecated (removed in {OLD_SPELLINGS_REMOVED_IN}), use {' '.join(new)}", file=sys.stderr)
            noticed.add(name)
        current += [f"{new[0]}={value}", *new[1:]] if equals else new
    return current
