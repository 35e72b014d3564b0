"""Shared fixtures: the profiles that ship in params/, loaded once per test session."""

from __future__ import annotations

import pytest

from moecalc import profiles


@pytest.fixture(scope="session")
def model():
    return profiles.load_model("deepseek-v3")


@pytest.fixture(scope="session")
def workload():
    return profiles.load_workload("seed-003")


@pytest.fixture(scope="session")
def gpus():
    """The seed's three GPUs, by the names its tables use."""
    return {"H800": profiles.load_hardware("h800"), "H20": profiles.load_hardware("h20"),
            "H20_3e": profiles.load_hardware("h20-3e")}
