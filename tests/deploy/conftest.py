"""Fixtures for the hub tests: a fake Hugging Face Hub on 127.0.0.1 (see hf_server.py)."""

from __future__ import annotations

import pytest

from hf_server import HubServer

ALICE_TOKEN = "hf_aliceWRITEtoken0123456789abcdefXYZ"
ALICE_READ_TOKEN = "hf_aliceREADtoken0123456789abcdefXYZ"
BOB_TOKEN = "hf_bobWRITEtoken0123456789abcdefXYZ"


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
