"""stages.contracts.errors: user errors are also the built-in errors callers catch."""

from __future__ import annotations

import pytest

from stages.contracts.errors import ConfigError, InputError, MissingInputError, UserError


@pytest.mark.parametrize(
    "error, builtin",
    [(ConfigError, ValueError), (InputError, ValueError), (MissingInputError, FileNotFoundError)],
)
def test_each_user_error_is_caught_as_its_builtin(error: type[UserError], builtin: type) -> None:
    with pytest.raises(builtin, match="the fix"):
        raise error("a problem; the fix")
    assert issubclass(error, UserError)
