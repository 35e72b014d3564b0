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


# The same two profiles under the short names the roofline, framework and model tests use
# (moecalc's own `m: Model`, `wl: Workload`; `v3` beside the other models).
@pytest.fixture(scope="session")
def m(model):
    return model


@pytest.fixture(scope="session")
def v3(model):
    return model


@pytest.fixture(scope="session")
def wl(workload):
    return workload


@pytest.fixture(scope="session")
def gpus():
    """The seed's three GPUs, by the names its tables use."""
    return {"H800": profiles.load_hardware("h800"), "H20": profiles.load_hardware("h20"),
            "H20_3e": profiles.load_hardware("h20-3e")}
