"""stages.contracts.actions: the ledger's actions, one enum of the contract's strings."""

from __future__ import annotations

import pandas as pd

from stages.contracts.actions import ACTIONS, KEPT, Action


def test_the_actions_are_the_ledger_strings_in_contract_order() -> None:
    assert [str(action) for action in ACTIONS] == ["keep", "fix", "remove", "skip"]
    assert Action("fix") is Action.FIX and f"{Action.REMOVE}" == "remove"


def test_kept_actions_select_ledger_rows_as_plain_strings_do() -> None:
    actions = pd.Series(["keep", "fix", "remove", "skip"])
    assert actions.isin(KEPT).tolist() == [True, True, False, False]
    assert set(actions) - set(ACTIONS) == set()
