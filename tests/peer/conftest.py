"""Fixtures for the peer tests."""

from __future__ import annotations

import pytest
from wormhole_support import reference_servers


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """The reference mailbox server and transit relay for a test module: (mailbox URL, relay URL)."""
    with reference_servers(tmp_path_factory.mktemp("wormhole-servers")) as urls:
        yield urls
