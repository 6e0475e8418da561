"""`socketkit remote run` and `remote copy`: a command or files on many hosts at once, over asyncssh's client.

One event loop holds every connection (a semaphore of `parallel`), with no process and no thread per host
(asyncssh builds each connection's options in the loop's small shared executor). What every host shares is
prepared once before the first connection (client.py): the keys (files and their certificates), the
known_hosts entries, the connection options. Each host then gets one bound, `timeout`,
for everything (TCP connect, key exchange, authentication and the command; for copy, connect and
authentication, then a generous transfer bound), so a host that accepts TCP and never speaks SSH is a
timeout on time, not a hang. Host keys are checked as ssh checks them, against known_hosts (`@cert-authority`
lines trust host certificates); an unknown host or a key that does not match is refused and named, never
accepted. asyncssh is imported only when a run starts: `socketkit --help` stays fast. Output (prefixed lines,
the summary table, JSON lines, the progress bar) is output.py's; targets and hosts files are hosts.py's.

    result = await run(["web1", "root@10.0.0.5:2222"], "uptime", known_hosts="kh", identity=["id"])
    result.exit_code, [(h.host, h.status, h.exit_status) for h in result.hosts]
    code = run_command([...], "uptime", hosts_file="hosts")      # the CLI's door: output, summary, exit code

Exit codes of run_command/copy_command: 0 every host ran and exited 0 (copy: every host has the files);
1 every host was reached, but a command failed there (non-zero exit, killed by a signal); 3 some host was not
reached at all or its copy failed (timed out, unreachable, auth failed, host key refused, sftp error).
"""

from __future__ import annotations

import asyncio
import functools
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from socketkit.remote.client import PathArg, Setup, classify, client_class, close, connect
from socketkit.remote.hosts import Target, TargetError, collect_targets, parse_copy_target
from socketkit.remote.output import LinePrinter, Progress, json_line, write_summary

EXIT_OK, EXIT_FAILED, EXIT_UNREACHED = 0, 1, 3
MAX_CAPTURE = 8 * 1024 * 1024  # bytes of each stream kept per host for json=True / capture=True

# status -> the word of the summary's count line
_KINDS = {"ok": "ok", "exit": "failed", "signal": "failed", "timeout": "timed out", "unreachable": "unreachable",
          "auth": "auth failed", "hostkey-mismatch": "host key mismatch", "hostkey-unknown": "unknown host key",
          "error": "error"}


@dataclass
class HostResult:
    """One host's outcome. `status`: ok, exit (non-zero), signal, timeout, unreachable, auth, hostkey-unknown,
    hostkey-mismatch, error; `error` says what went wrong in words."""

    target: Target
    status: str = "ok"
    exit_status: int | None = None
    signal: str | None = None
    error: str | None = None
    seconds: float = 0.0
    stdout: bytes = b""  # kept only with capture (json=True captures)
    stderr: bytes = b""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    files: int = 0  # copy: files written and bytes sent
    sent: int = 0  # bytes

    @property
    def host(self) -> str:
        return self.target.label

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def reached(self) -> bool:
        """The command ran (whatever it returned)."""
        return self.status in ("ok", "exit", "signal")

    @property
    def kind(self) -> str:
        return _KINDS.get(self.status, self.status)

    def describe(self) -> str:
        if self.status == "ok":
            if self.files:
                return f"copied {self.files} file{'s' if self.files != 1 else ''} ({_human(self.sent)})"
            return "exit 0"
        if self.status == "exit":
            return f"exit {self.exit_status}"
        if self.status == "signal":
            return f"killed by SIG{self.signal}"
        return self.error or self.status


@dataclass
class FanoutResult:
    hosts: list[HostResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(h.ok for h in self.hosts)

    @property
    def failed(self) -> list[HostResult]:
        return [h for h in self.hosts if not h.ok]

    @property
    def exit_code(self) -> int:
        if self.ok:
            return EXIT_OK
        return EXIT_FAILED if all(h.reached for h in self.hosts) else EXIT_UNREACHED

    def __getitem__(self, label: str) -> HostResult:
        for h in self.hosts:
            if h.host == label:
                return h
        raise KeyError(label)


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


@functools.cache
def _session_class():
    """asyncssh's session callbacks for a command, made on first use (asyncssh is imported only then)."""
    import asyncssh

    class Session(asyncssh.SSHClientSession):
        """A command's output: to the printer as it comes, and kept (bounded) when asked."""

        def __init__(self, index: int, printer: LinePrinter | None, result: HostResult,
                     kept: dict[bool, bytearray] | None) -> None:
            self.index, self.printer, self.result, self.kept = index, printer, result, kept

        def data_received(self, data: bytes, datatype) -> None:
            is_err = datatype == asyncssh.EXTENDED_DATA_STDERR
            if self.printer is not None:
                self.printer.feed(self.index, is_err, data)
            if self.kept is not None:
                buf = self.kept[is_err]
                room = MAX_CAPTURE - len(buf)
                if len(data) > room:
                    setattr(self.result, "stderr_truncated" if is_err else "stdout_truncated", True)
                buf += data[:max(room, 0)]

    return Session


# -- run ----------------------------------------------------------------------------------------------
async def _run_host(index: int, target: Target, command: str, setup: Setup, sem: asyncio.Semaphore,
                    printer: LinePrinter | None, capture: bool) -> HostResult:
    result = HostResult(target)
    client = client_class()()
    kept = {False: bytearray(), True: bytearray()}
    session = _session_class()(index, printer, result, kept if capture else None)

    async with sem:
        start = time.monotonic()
        conn = None
        try:
            async with asyncio.timeout(setup.timeout):
                conn = await connect(target, setup, client)
                client.phase = "running the command"
                chan, _ = await conn.create_session(lambda: session, command, encoding=None)
                chan.write_eof()  # the command gets an empty stdin, never our terminal
                await chan.wait_closed()
            status, sig = chan.get_exit_status(), chan.get_exit_signal()
            if sig is not None:
                result.status, result.signal = "signal", sig[0]
                result.exit_status = None
            elif status is None:
                result.status, result.error = "error", "the connection closed before the command's exit status"
            else:
                result.exit_status = status
                result.status = "ok" if status == 0 else "exit"
        except Exception as e:
            result.status, result.error = classify(e, client, target, setup)
        finally:
            await close(conn)
            if printer is not None:
                printer.finish(index)
            result.seconds = time.monotonic() - start
            result.stdout, result.stderr = bytes(kept[False]), bytes(kept[True])
    return result


async def run(targets: list[str] | tuple[str, ...], command: str, *, hosts_file: PathArg | None = None,
              parallel: int = 64, timeout: float = 30.0, identity: list[PathArg] | None = None,
              known_hosts: PathArg | list[PathArg] | None = None, ssh_config: PathArg | list[PathArg] | None = None,
              agent: str | bool | None = None, json: bool = False, capture: bool = False,
              out: TextIO | None = None, err: TextIO | None = None, summary: bool = True,
              colour: bool | None = None) -> FanoutResult:
    """Run `command` (a shell command line) on every target at once. Output streams as it comes (prefixed
    lines), then a summary table on `err`; with json=True, one JSON object per host on `out` and nothing else.
    `ssh_config=[]` reads no ssh config; `agent=False` uses no ssh-agent (default: $SSH_AUTH_SOCK)."""
    out = out or sys.stdout
    err = err or sys.stderr
    hosts = collect_targets(list(targets), hosts_file)
    setup = Setup.prepare(identity=identity, known_hosts=known_hosts, ssh_config=ssh_config, agent=agent,
                          timeout=timeout, parallel=parallel)
    printer = None if json else LinePrinter([t.label for t in hosts], out, err, colour_out=colour, colour_err=colour)
    sem = asyncio.Semaphore(parallel)
    started = time.monotonic()
    results: list[HostResult | None] = [None] * len(hosts)

    async def one(i: int, t: Target) -> None:
        results[i] = r = await _run_host(i, t, command, setup, sem, printer, capture or json)
        if json:
            out.write(json_line(r) + "\n")
            out.flush()

    async with asyncio.TaskGroup() as tg:
        for i, t in enumerate(hosts):
            tg.create_task(one(i, t))
    done = FanoutResult([r for r in results if r is not None], time.monotonic() - started)
    if summary and not json:
        write_summary(done.hosts, err, colour=colour, seconds=done.seconds)
    return done


def run_command(targets: list[str], command: str, *, hosts_file: PathArg | None = None, parallel: int = 64,
                timeout: float = 30.0, identity: list[PathArg] | None = None, known_hosts: PathArg | None = None,
                ssh_config: PathArg | None = None, json: bool = False, loop: str | None = "auto",
                agent: str | bool | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """`socketkit remote run`: run(), then the exit code (0 all exited 0; 1 a command failed; 3 a host was
    not reached). Errors in the arguments (a bad target, an unreadable key) raise TargetError."""
    from socketkit.net.loop import run as run_loop

    result = run_loop(run(targets, command, hosts_file=hosts_file, parallel=parallel, timeout=timeout,
                          identity=identity, known_hosts=known_hosts, ssh_config=ssh_config, agent=agent,
                          json=json, out=out, err=err), loop=loop)
    return result.exit_code


# -- copy ---------------------------------------------------------------------------------------------
def _local_sizes(files: list[PathArg], recursive: bool) -> tuple[int, int]:
    """(files, bytes) of what will be sent to each host; a missing file or a directory without -r is an
    error before any connection."""
    count = total = 0
    for f in files:
        p = Path(f)
        if not p.exists():
            raise TargetError(f"{f}: no such file or directory")
        if p.is_dir():
            if not recursive:
                raise TargetError(f"{f} is a directory: copy it with -r (recursive)")
            for root, _dirs, names in os.walk(p, followlinks=True):
                for n in names:
                    count += 1
                    total += os.stat(os.path.join(root, n)).st_size
        else:
            count += 1
            total += p.stat().st_size
    return count, total


async def _copy_host(target: Target, files: list[str], path: str, setup: Setup, sem: asyncio.Semaphore,
                     recursive: bool, preserve: bool, transfer_timeout: float, bar: Progress,
                     count: int, size: int) -> HostResult:
    result = HostResult(target)
    client = client_class()()
    sent: dict[bytes, int] = {}

    def progress(src: bytes, dst: bytes, copied: int, total: int) -> None:
        delta = copied - sent.get(dst, 0)
        sent[dst] = copied
        result.sent += delta
        bar.update(delta)

    async with sem:
        start = time.monotonic()
        conn = None
        try:
            async with asyncio.timeout(setup.timeout):
                conn = await connect(target, setup, client)
                client.phase = "starting sftp"
                sftp = await conn.start_sftp_client()
            client.phase = "copying"
            try:
                async with asyncio.timeout(transfer_timeout):
                    if path.endswith("/"):
                        await sftp.makedirs(path, exist_ok=True)
                    await sftp.put(files, path or None, recurse=recursive, preserve=preserve,
                                   follow_symlinks=True, progress_handler=progress)
            except TimeoutError:
                result.status, result.error = "timeout", f"copy timed out after {transfer_timeout:g}s"
            else:
                result.files = count
            finally:
                sftp.exit()
        except Exception as e:
            result.status, result.error = classify(e, client, target, setup)
        finally:
            await close(conn)
            result.seconds = time.monotonic() - start
            if not result.ok:
                bar.discount(size - result.sent)
    return result


async def copy(files: list[PathArg], target_spec: str, *, hosts_file: PathArg | None = None,
               recursive: bool = False, preserve: bool = True, parallel: int = 64, timeout: float = 30.0,
               transfer_timeout: float | None = None, identity: list[PathArg] | None = None,
               known_hosts: PathArg | list[PathArg] | None = None, ssh_config: PathArg | list[PathArg] | None = None,
               agent: str | bool | None = None, err: TextIO | None = None, summary: bool = True,
               colour: bool | None = None) -> FanoutResult:
    """Push `files` over sftp to every host at once: `target_spec` is HOST:PATH (scp's rules: a relative PATH
    is under the home directory, an existing directory receives the files, a PATH ending in / is made), or
    :PATH with `hosts_file` (both: the union). `timeout` bounds connect + authentication; the transfer has
    its own bound (default 60 s + 1 s per MB per host). Modes and times are kept (as scp -p)."""
    err = err or sys.stderr
    target, path = parse_copy_target(target_spec)
    if target is None and hosts_file is None:
        raise TargetError(f"{target_spec}: no host before ':'; give --hosts FILE for :PATH")
    hosts = collect_targets([target] if target else [], hosts_file)
    count, size = _local_sizes(files, recursive)
    if transfer_timeout is None:
        transfer_timeout = 60.0 + size / 1e6
    setup = Setup.prepare(identity=identity, known_hosts=known_hosts, ssh_config=ssh_config, agent=agent,
                          timeout=timeout, parallel=parallel)
    sem = asyncio.Semaphore(parallel)
    bar = Progress(size * len(hosts), err)
    started = time.monotonic()
    names = [os.fspath(f) for f in files]
    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(_copy_host(t, names, path, setup, sem, recursive, preserve, transfer_timeout,
                                               bar, count, size)) for t in hosts]
    finally:
        bar.close()
    done = FanoutResult([t.result() for t in tasks], time.monotonic() - started)
    if summary:
        write_summary(done.hosts, err, colour=colour, seconds=done.seconds)
    return done


def copy_command(files: list[PathArg], target_spec: str, *, hosts_file: PathArg | None = None,
                 recursive: bool = False, parallel: int = 64, timeout: float = 30.0,
                 identity: list[PathArg] | None = None, known_hosts: PathArg | None = None,
                 ssh_config: PathArg | None = None, loop: str | None = "auto", agent: str | bool | None = None,
                 preserve: bool = True, transfer_timeout: float | None = None, err: TextIO | None = None) -> int:
    """`socketkit remote copy`: copy(), then the exit code (0 every host has the files, 3 otherwise)."""
    from socketkit.net.loop import run as run_loop

    result = run_loop(copy(files, target_spec, hosts_file=hosts_file, recursive=recursive, preserve=preserve,
                           parallel=parallel, timeout=timeout, transfer_timeout=transfer_timeout,
                           identity=identity, known_hosts=known_hosts, ssh_config=ssh_config, agent=agent,
                           err=err), loop=loop)
    return result.exit_code


__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_UNREACHED", "FanoutResult", "HostResult", "copy", "copy_command", "run",
           "run_command"]
