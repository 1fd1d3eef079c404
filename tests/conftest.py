"""Shared fixtures: small simulated scans and the real data files shipped in tests/data."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from edgeray.sim import PtychoSimConfig, TomoSimConfig, simulate_ptycho, simulate_tomo

DATA = Path(__file__).parent / "data"
sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))  # the peers' wrappers (astra_peer), not shipped


@pytest.fixture(scope="session")
def petra_cxi() -> Path:
    """Real near-field ptychography scan (PETRA III P25, CC BY 4.0)."""
    return DATA / "petra3_p25_nearfield.cxi"


@pytest.fixture(scope="session")
def tooth_h5() -> Path:
    """Real tomography scan (tomopy's tooth.h5, BSD)."""
    return DATA / "tooth.h5"


@pytest.fixture(scope="session")
def small_ptycho_config() -> PtychoSimConfig:
    return PtychoSimConfig(frame_size=32, n_positions=120, step_px=4.0, photons=1e4, seed=3)


@pytest.fixture(scope="session")
def small_scan(small_ptycho_config):
    return simulate_ptycho(small_ptycho_config)


@pytest.fixture(scope="session")
def small_tomo():
    return simulate_tomo(TomoSimConfig(size=64, slices=4, angles=90, seed=2))
