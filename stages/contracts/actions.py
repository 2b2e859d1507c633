"""The actions of the decision ledger (`action` column; DESIGN.md: the ledger contract)."""

from __future__ import annotations

from enum import StrEnum


class Action(StrEnum):
    """What decide did with a manifest row. Values are the ledger's strings."""

    KEEP = "keep"
    FIX = "fix"
    REMOVE = "remove"
    SKIP = "skip"


ACTIONS: tuple[Action, ...] = tuple(Action)
"""Every action; keep + fix + remove + skip = manifest rows."""

KEPT: tuple[Action, ...] = (Action.KEEP, Action.FIX)
"""Actions whose rows stay in the cleaned split (with `new_label`)."""
