"""Serving tests: the multi-node runs (marked ``slow``, minutes each) run only when
selected with ``-m slow``."""

import pytest


def pytest_collection_modifyitems(config, items):
    if "slow" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="multi-node Ray run (about 2 minutes): select it with -m slow")
    for item in items:
        if "slow" in item.keywords and "tests/serve/" in item.nodeid.replace("\\", "/"):
            item.add_marker(skip)
