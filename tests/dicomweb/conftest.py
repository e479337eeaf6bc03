"""Fixtures shared by DICOMweb's fast tests."""

from __future__ import annotations

import pytest

from gateway.storage.models import db, open_database


@pytest.fixture
def database(tmp_path):
    """A fresh SQLite database, migrated, with a connection open for the test (and room for a few threads)."""
    database = open_database(f"sqlite:///{tmp_path}/gw.db", max_connections=4)
    with db.connection_context():
        yield database
    database.close_all()
