"""Every storage in every layout keeps its contract (tests/helpers.py check_storage_round_trip)."""

from __future__ import annotations

import pytest

from lifecycle.storage import LAYOUTS, STORAGES
from tests.helpers import check_storage_round_trip


@pytest.mark.parametrize(("storage", "layout"), [(storage, layout) for storage in STORAGES for layout in LAYOUTS
                                                 if LAYOUTS[layout].fits(storage)])
def test_storage_round_trip(storage: str, layout: str) -> None:
    check_storage_round_trip(storage, layout)
