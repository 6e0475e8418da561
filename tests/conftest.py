"""Test harness: `async def` tests run on a fresh event loop (uvloop when installed) with a deadline.

No pytest-asyncio: one small hook keeps every async test bounded in time, so a bug shows as a failure
that names the test instead of a hung suite.
"""

from __future__ import annotations

import asyncio
import inspect
import os

import pytest
from hypothesis import HealthCheck, settings

from socketkit.net.loop import new_event_loop

# Under pytest-timeout's 60 s (pyproject.toml), so that a stuck async test fails with a traceback of where
# it waits; a test marked `timeout(N)` gets N - 10 s instead.
ASYNC_TEST_TIMEOUT = float(os.environ.get("SOCKETKIT_TEST_TIMEOUT", "45"))

# Property tests: no per-example deadline (a loaded CI machine makes timings "unreliable", which is not a
# bug in the code under test); tests may still set their own example counts.
settings.register_profile("socketkit", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("socketkit")


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function):
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    kwargs = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    budget = ASYNC_TEST_TIMEOUT
    marker = pyfuncitem.get_closest_marker("timeout")
    if marker is not None and marker.args:
        budget = max(budget, float(marker.args[0]) - 10)
    loop = new_event_loop(os.environ.get("SOCKETKIT_TEST_LOOP"))
    try:
        async def bounded():
            async with asyncio.timeout(budget):
                await pyfuncitem.obj(**kwargs)

        loop.run_until_complete(bounded())
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()
    return True


def pytest_collection_modifyitems(items):
    for item in items:
        if inspect.iscoroutinefunction(getattr(item, "obj", None)):
            item.add_marker(pytest.mark.asyncio_native)


def pytest_configure(config):
    config.addinivalue_line("markers", "asyncio_native: async test run by socketkit's conftest")
    # Nothing a test does may touch the user's real data directory (dev CA, mail, chat, accounts):
    # every test process gets a private one unless a test sets its own.
    import tempfile

    config._socketkit_data = tempfile.mkdtemp(prefix="socketkit-test-data-")
    os.environ["SOCKETKIT_DATA"] = config._socketkit_data
    _isolate_ssh_home(os.path.join(config._socketkit_data, "home"))


def _isolate_ssh_home(home: str) -> None:
    """socketkit's SSH server starts a session's shell in the account's home, and bash then reads ~/.bashrc
    (as under sshd). This machine's own startup files must neither slow the tests down nor decide them:
    root's runs `pyenv rehash`, which waits up to a minute on a lock that a shell killed mid-rehash (a
    test that hangs up a session) leaves behind. So in tests the account the server logs people in as has
    a scratch home, as fanout_support's sshd gets with `SetEnv HOME`. A test that needs the real
    ~/.ssh/authorized_keys could not have it anyway: nothing here may read the user's real files."""
    import dataclasses

    from socketkit.remote import auth

    os.makedirs(home, exist_ok=True)
    real = auth.Account.current

    def current() -> auth.Account:
        return dataclasses.replace(real(), home=home)

    auth.Account.current = staticmethod(current)  # type: ignore[method-assign]


def pytest_unconfigure(config):
    import shutil

    path = getattr(config, "_socketkit_data", None)
    if path:
        shutil.rmtree(path, ignore_errors=True)
