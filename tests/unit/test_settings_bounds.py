"""Settings whose values would pass a type check and then fail far from where they were set."""

from __future__ import annotations

import pytest

from kb.settings import Settings

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("days", ["inf", "1e9", "1000000", "-1", "nan"])
def test_a_retention_beyond_what_dates_can_hold_is_refused_where_it_is_set(days: str) -> None:
    with pytest.raises(ValueError, match="retention_days"):
        Settings(conversations={"retention_days": days})


def test_a_retention_of_a_century_is_accepted() -> None:
    assert Settings(conversations={"retention_days": 36_500}).conversations.retention_days == 36_500
