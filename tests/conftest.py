"""Shared test configuration: quiet TensorFlow, `--runslow`, the CamVid path."""

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest

SHARED_CAMVID = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "camvid"


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


@pytest.fixture
def camvid_root():
    if not SHARED_CAMVID.is_dir():
        pytest.skip(f"CamVid not found at {SHARED_CAMVID}")
    return SHARED_CAMVID
