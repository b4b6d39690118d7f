"""Fixtures for the hub tests: a fake Hugging Face Hub on 127.0.0.1 (see hf_server.py)."""

from __future__ import annotations

import pytest

from hf_server import HubServer

from hub_accounts import ALICE_READ_TOKEN, ALICE_TOKEN, BOB_TOKEN


@pytest.fixture
def hf_server():
    """A fresh fake hub per test: users alice (member of org 'tuners') and bob, no repositories."""
    server = HubServer()
    server.add_user("alice", ALICE_TOKEN, orgs=("tuners",))
    server.add_user("alice", ALICE_READ_TOKEN, orgs=("tuners",), role="read")
    server.add_user("bob", BOB_TOKEN)
    server.start()
    try:
        yield server
    finally:
        server.stop()
