"""The account store: API, hashes, timing uniformity, file safety, processes, limiter, CLI round trip."""

from __future__ import annotations

import asyncio
import hashlib
import multiprocessing
import os
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from socketkit import accounts
from socketkit.accounts import (
    Account,
    AccountError,
    AccountExistsError,
    AccountNotFoundError,
    AccountStore,
    LoginLimiter,
    hash_password,
    needs_rehash,
    verify_async,
    verify_password,
)
from socketkit.errors import SocketkitError

PW = "correct horse battery"


@pytest.fixture
def store(tmp_path):
    with AccountStore(tmp_path / "acc.db") as s:
        yield s


@pytest.fixture
def kdf_calls(monkeypatch):
    calls = []
    real = hashlib.scrypt

    def counting(*args, **kwargs):
        calls.append(kwargs.get("n"))
        return real(*args, **kwargs)

    monkeypatch.setattr(hashlib, "scrypt", counting)
    return calls


def _stored_hash(path: Path, key: str) -> str:
    with sqlite3.connect(path) as c:
        return c.execute("SELECT password FROM accounts WHERE key = ?", (key,)).fetchone()[0]


# -- API --------------------------------------------------------------------------------------------
def test_add_get_list_verify_set_password_delete(store):
    before = time.time()
    acc = store.add("Alice", PW, email="alice@example.org")
    assert isinstance(acc, Account)
    assert (acc.name, acc.email, acc.disabled) == ("Alice", "alice@example.org", False)
    assert before <= acc.created_at <= time.time()
    assert store.get("Alice") == acc
    assert store.get("bob") is None
    store.add("bob", PW)
    assert [a.name for a in store.list()] == ["Alice", "bob"]
    assert store.verify("Alice", PW) == acc
    assert store.verify("Alice", PW + "x") is None
    store.set_password("alice", "another password")
    assert store.verify("Alice", PW) is None
    assert store.verify("Alice", "another password") == acc
    store.delete("ALICE")
    assert store.get("alice") is None
    assert store.verify("alice", "another password") is None
    assert [a.name for a in store.list()] == ["bob"]


def test_names_are_case_insensitive_but_keep_their_spelling(store):
    store.add("MiXeD", PW)
    with pytest.raises(AccountExistsError, match="already exists"):
        store.add("mixed", PW)
    assert store.get("MIXED").name == "MiXeD"
    assert store.verify("mIxEd", PW).name == "MiXeD"
    assert accounts.name_key("MiXeD") == "mixed"


def test_missing_accounts_raise_not_found(store):
    for call in (lambda: store.delete("ghost"), lambda: store.set_password("ghost", PW),
                 lambda: store.set_disabled("ghost")):
        with pytest.raises(AccountNotFoundError, match="no account named 'ghost'"):
            call()
    assert issubclass(AccountNotFoundError, AccountError) and issubclass(AccountError, SocketkitError)
    assert issubclass(AccountExistsError, AccountError)


@pytest.mark.parametrize("name", ["", "a" * 65, "has space", "tab\t", "new\nline", "ünï", "semi;colon",
                                  "a/b", "x" * 3 + "\n", None, 5])
def test_bad_names_are_refused_naming_the_rule(store, name):
    with pytest.raises(AccountError, match=r"1 to 64 characters from A-Z a-z 0-9 \. _ - @ \+"):
        store.add(name, PW)


@pytest.mark.parametrize("name", ["a", "a" * 64, "user.name_x-y@example.org+tag", "007"])
def test_good_names(store, name):
    assert store.add(name, PW).name == name


@pytest.mark.parametrize("password", ["short", "x" * 7, "x" * 1025])
def test_bad_password_lengths_name_the_rule_and_never_echo_it(store, password):
    with pytest.raises(AccountError, match="8 to 1024 characters") as info:
        store.add("alice", password)
    assert password not in str(info.value)
    assert store.get("alice") is None


def test_other_bad_passwords(store):
    with pytest.raises(AccountError, match="NUL"):
        store.add("alice", "abc\x00defgh")
    with pytest.raises(AccountError, match="text"):
        store.add("alice", b"bytes password")  # type: ignore[arg-type]
    with pytest.raises(AccountError, match="surrogates"):
        store.add("alice", "abcdefgh\udcff")
    with pytest.raises(AccountError, match="8 to 1024"):
        store.set_password("alice", "short")  # validated before the account is looked for


def test_password_limits_accepted_and_unicode_normalised(store):
    store.add("min", "x" * 8)
    store.add("max", "y" * 1024)
    assert store.verify("min", "x" * 8) and store.verify("max", "y" * 1024)
    assert store.verify("max", "y" * 1024 + "y") is None  # no truncation to the limit
    store.add("uni", "caf\u00e9 au lait")  # composed é
    assert store.verify("uni", "cafe\u0301 au lait")  # decomposed: same text, NFC-normalised


def test_email_checked(store):
    with pytest.raises(AccountError, match="email"):
        store.add("alice", PW, email="not an email")
    store.add("alice", PW, email="")
    assert store.get("alice").email is None
    store.set_email("alice", "a@b.example")
    assert store.get("alice").email == "a@b.example"


def test_disabled_account_never_verifies(store, kdf_calls):
    store.add("alice", PW)
    store.set_disabled("alice")
    assert store.get("alice").disabled is True
    kdf_calls.clear()
    assert store.verify("alice", PW) is None
    assert len(kdf_calls) == 1  # and costs the same as any other verify
    store.set_disabled("alice", False)
    assert store.verify("alice", PW).name == "alice"


# -- hashes -----------------------------------------------------------------------------------------
def test_hash_format_is_self_describing():
    h = hash_password(PW)
    scheme, n, r, p, salt, digest = h.split("$")
    assert (scheme, n, r, p) == ("scrypt", str(2**14), "8", "1")
    import base64

    assert len(base64.b64decode(salt)) == 16 and len(base64.b64decode(digest)) == 32
    assert hash_password(PW) != h  # random salt
    assert verify_password(PW, h) and not verify_password(PW + "!", h)
    assert not needs_rehash(h)


def test_changed_parameters_still_verify_and_need_rehash(store, kdf_calls):
    old = hash_password(PW, n=2**12, r=4, p=2)
    assert old.startswith("scrypt$4096$4$2$")
    assert verify_password(PW, old) and not verify_password("wrong password", old)
    assert needs_rehash(old)
    for junk in ("", "bcrypt$x", "scrypt$3$8$1$AA==$AA==", "scrypt$16384$8$1$!!$AA==", "scrypt$16$8"):
        assert needs_rehash(junk)
        assert not verify_password(PW, junk)

    # a verify through the store upgrades an old hash to the current parameters
    store.add("alice", PW)
    with sqlite3.connect(store.path) as c:
        c.execute("UPDATE accounts SET password = ? WHERE key = 'alice'", (old,))
    kdf_calls.clear()
    assert store.verify("alice", "wrong password") is None
    assert _stored_hash(store.path, "alice") == old  # a failed verify changes nothing
    assert store.verify("alice", PW).name == "alice"
    assert kdf_calls[:2] == [2**12, 2**12] and kdf_calls[2:] == [2**14]  # the stored n, then the rehash
    new = _stored_hash(store.path, "alice")
    assert new != old and not needs_rehash(new)
    assert store.verify("alice", PW).name == "alice"


def test_tampered_parameters_are_bounded():
    assert needs_rehash("scrypt$2147483648$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AA==")
    assert not verify_password(PW, "scrypt$2147483648$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AA==")


# -- timing: an unknown name costs a KDF run too -------------------------------------------------------
@pytest.mark.parametrize("name", ["alice", "nobody", "not a valid name!", "x" * 200])
def test_every_verify_runs_the_kdf_once(store, kdf_calls, name):
    store.add("alice", PW)
    kdf_calls.clear()
    assert store.verify(name, "wrong password") is None
    assert kdf_calls == [2**14]  # with the current parameters, like a real account's hash


def test_unknown_user_verify_takes_kdf_time(store):
    store.add("alice", PW)

    def once(name):
        t = time.perf_counter()
        store.verify(name, "wrong password")
        return time.perf_counter() - t

    # Interleaved, best of five each: a burst of load on the CI machine slows both names alike instead of
    # all the runs of one. Without the KDF an unknown name would take well under a hundredth of the time,
    # so a factor of three still tells the two apart.
    runs = [(once("alice"), once("nobody")) for _ in range(5)]
    known, unknown = min(k for k, _ in runs), min(u for _, u in runs)
    assert unknown >= known / 3 and known >= unknown / 3, (known, unknown)


# -- file safety, processes, threads ----------------------------------------------------------------------
def test_default_path_is_in_the_data_dir_with_private_modes(tmp_path, monkeypatch):
    data = tmp_path / "data"
    monkeypatch.setenv("SOCKETKIT_DATA", str(data))
    with AccountStore() as s:
        s.add("alice", PW)
        assert s.path == data / "accounts.db"
        assert stat.S_IMODE(os.stat(data).st_mode) == 0o700
        for f in data.iterdir():  # accounts.db and, while open, its -wal / -shm files
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    with sqlite3.connect(data / "accounts.db") as c:
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert c.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "1"


def test_explicit_path_creates_private_parent_dir(tmp_path):
    path = tmp_path / "a" / "b" / "acc.db"
    with AccountStore(path):
        pass
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_reopen_keeps_accounts_and_newer_schema_is_refused(tmp_path):
    path = tmp_path / "acc.db"
    with AccountStore(path) as s:
        s.add("alice", PW)
    with AccountStore(path) as s:
        assert s.verify("alice", PW)
    with sqlite3.connect(path) as c:
        c.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(AccountError, match="schema version 99"):
        AccountStore(path)


def test_unusable_path_is_one_clear_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(AccountError, match="cannot"):
        AccountStore(tmp_path / "file" / "acc.db")


def _add_many(path: str, prefix: str, count: int, start, out) -> None:
    start.wait(30)
    try:
        with AccountStore(path) as s:
            for i in range(count):
                s.add(f"{prefix}{i}", PW)
        out.put((prefix, "ok"))
    except BaseException as e:  # report, so the parent's assertion says what went wrong
        out.put((prefix, repr(e)))


def test_two_processes_add_concurrently(tmp_path):
    path = str(tmp_path / "acc.db")
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_add_many, args=(path, prefix, 8, start, out)) for prefix in ("p", "q")]
    for p in procs:
        p.start()
    start.set()
    results = dict(out.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert results == {"p": "ok", "q": "ok"}
    with AccountStore(path) as s:
        assert len(s.list()) == 16
        assert s.verify("p7", PW) and s.verify("q0", PW)


def test_threads_share_one_store(store):
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: store.add(f"user{i}", PW), range(16)))
        results = list(pool.map(lambda i: store.verify(f"user{i}", PW), range(16)))
    assert all(results) and len(store.list()) == 16


async def test_verify_async_runs_off_the_event_loop(store):
    store.add("alice", PW)
    loop_thread = threading.get_ident()
    seen = []
    real = store.verify

    def spy(name, password):
        seen.append(threading.get_ident())
        return real(name, password)

    store.verify = spy  # type: ignore[method-assign]
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.002)
            ticks += 1

    t = asyncio.create_task(ticker())
    ok, bad = await asyncio.gather(verify_async(store, "alice", PW), verify_async(store, "nobody", PW))
    t.cancel()
    assert ok.name == "alice" and bad is None
    assert seen and loop_thread not in seen
    assert ticks >= 2  # the loop kept running during the KDF


# -- limiter --------------------------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_limiter_allows_a_burst_then_one_per_interval():
    clock = Clock()
    lim = LoginLimiter(max_failures=5, per_seconds=60, clock=clock)
    for _ in range(5):
        assert lim.allowed("1.2.3.4")
        lim.failed("1.2.3.4")
    assert not lim.allowed("1.2.3.4")
    assert lim.retry_after("1.2.3.4") == pytest.approx(12.0)
    assert lim.allowed("5.6.7.8") and lim.retry_after("5.6.7.8") == 0.0  # keys are independent
    clock.now += 11.9
    assert not lim.allowed("1.2.3.4")
    clock.now += 0.2
    assert lim.allowed("1.2.3.4")  # one token back after 60/5 s
    lim.failed("1.2.3.4")
    assert not lim.allowed("1.2.3.4")
    clock.now += 60
    for _ in range(5):  # fully refilled, not more
        assert lim.allowed("1.2.3.4")
        lim.failed("1.2.3.4")
    assert not lim.allowed("1.2.3.4")


def test_limiter_success_forgives_and_memory_is_bounded():
    clock = Clock()
    lim = LoginLimiter(max_failures=2, per_seconds=10, max_keys=3, clock=clock)
    lim.failed("alice")
    lim.failed("alice")
    assert not lim.allowed("alice")
    lim.succeeded("alice")
    assert lim.allowed("alice") and len(lim) == 0
    for i in range(10):
        lim.failed(f"ip{i}")
        lim.failed(f"ip{i}")
    assert len(lim) <= 3
    assert not lim.allowed("ip9")  # the most recent keys are the ones kept
    with pytest.raises(ValueError):
        LoginLimiter(max_failures=0)


def test_limiter_is_thread_safe():
    lim = LoginLimiter(max_failures=1000, per_seconds=1e9)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: lim.failed("k"), range(1000)))
    assert not lim.allowed("k")


# -- CLI ------------------------------------------------------------------------------------------------
def _cli(*args: str, input: str = "", cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "socketkit", "user", *args], input=input.encode(),
                          capture_output=True, cwd=cwd, env=env, timeout=60)


@pytest.mark.timeout(180)   # a dozen CLI processes in a row: 13 s on a quiet-ish machine, more under CI load
def test_cli_round_trip(tmp_path):
    env = {**os.environ, "SOCKETKIT_DATA": str(tmp_path / "data"),
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    db = ["--db", "tmp/acc.db"]
    r = _cli("add", "alice", "--password-stdin", "--email", "a@example.org", *db,
             input=PW + "\n", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    r = _cli("list", *db, cwd=tmp_path, env=env)
    assert r.returncode == 0 and r.stdout.decode().split("\t")[:2] == ["alice", "a@example.org"]
    with AccountStore(tmp_path / "tmp" / "acc.db") as s:
        assert s.verify("alice", PW)  # the newline ended the password, it is not part of it

    r = _cli("passwd", "ALICE", "--password-stdin", *db, input="new password 2\n", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    with AccountStore(tmp_path / "tmp" / "acc.db") as s:
        assert s.verify("alice", "new password 2") and not s.verify("alice", PW)

    for args, needle in [(("add", "Alice", "--password-stdin"), "already exists"),
                         (("add", "bob", "--password-stdin"), "8 to 1024 characters"),
                         (("add", "bad name", "--password-stdin"), "not allowed"),
                         (("del", "nobody"), "no account named 'nobody'"),
                         (("passwd", "nobody", "--password-stdin"), "no account named 'nobody'")]:
        r = _cli(*args, *db, input="tiny\n" if "bob" in args else PW + "\n", cwd=tmp_path, env=env)
        err = r.stderr.decode()
        assert r.returncode == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert needle in err and "tiny" not in err and PW not in err, err

    r = _cli("del", "alice", *db, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    r = _cli("list", *db, cwd=tmp_path, env=env)
    assert r.returncode == 0 and r.stdout == b""

    # without --db: the data directory
    r = _cli("add", "carol", "--password-stdin", input=PW, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "data" / "accounts.db").exists()
    assert _cli("list", cwd=tmp_path, env=env).stdout.decode().startswith("carol\t")
