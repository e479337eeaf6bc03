"""Fixtures shared by the whole suite: real peers (PostgreSQL, the gateway), synthetic studies, strict DICOM."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import config as pydicom_config

from support.peers import GatewayProcess, PostgresCluster
from gateway.demo import write_demo_study
from gateway.dicomnet import install_fast_paths


@pytest.fixture(scope="session", autouse=True)
def strict_dicom():
    """Writing invalid values raises in tests (highdicom does the same for its suite)."""
    previous = pydicom_config.settings.writing_validation_mode
    pydicom_config.settings.writing_validation_mode = pydicom_config.RAISE
    yield
    pydicom_config.settings.writing_validation_mode = previous


@pytest.fixture(scope="session", autouse=True)
def pynetdicom_hooks():
    """The gateway's pynetdicom hooks, as a node installs them when it starts; in-process SCPs and SCUs of the
    tests run with them. Installing them must succeed on the pinned pynetdicom."""
    installed = install_fast_paths()
    assert installed.installed, f"pynetdicom hooks not installed: {installed}"
    return installed


@pytest.fixture(scope="session")
def pg_cluster():
    cluster = PostgresCluster().start()
    yield cluster
    cluster.destroy()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    """Every test that takes this runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/gateway.db"
    return request.getfixturevalue("pg_cluster").new_database()


@pytest.fixture(scope="session")
def small_study(tmp_path_factory) -> list[Path]:
    return write_demo_study(tmp_path_factory.mktemp("small-study"), 12, seed=1, rows=128, cols=128)


@pytest.fixture(scope="session")
def big_study(tmp_path_factory) -> list[Path]:
    """The benchmark-sized study: 300 instances of 512x512 16-bit (about 157 MB)."""
    return write_demo_study(tmp_path_factory.mktemp("big-study"), 300, seed=2)


@pytest.fixture
def gateway(tmp_path, database_url):
    node = GatewayProcess(tmp_path / "gw", database_url).start()
    yield node
    node.stop()
