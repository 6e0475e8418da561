"""Files to and from `remote serve` with OpenSSH's own programs: sftp, scp in its default (sftp) mode and
the legacy scp protocol (-O), both ways, exit status 0, and every file on the audit log with its size."""

from __future__ import annotations

import os

import pytest
from sshsupport import remote_path, require_openssh, run, serving

pytestmark = pytest.mark.usefixtures("openssh")


@pytest.fixture
def openssh():
    require_openssh()


async def test_sftp_put_and_get_exit_zero_and_home_as_start(tmp_path):
    data = os.urandom(1 << 20) + bytes(range(256))
    (tmp_path / "up.bin").write_bytes(data)
    async with serving(tmp_path) as s:
        batch = (f"pwd\nput {tmp_path}/up.bin {tmp_path}/remote.bin\n"
                 f"get {tmp_path}/remote.bin {tmp_path}/down.bin\nls -l {tmp_path}/remote.bin\n").encode()
        res = await run(s.sftp(), input=batch, timeout=60)
        assert res.rc == 0, res.errtext  # OpenSSH 9's sftp wants the server's exit status 0
        assert f"Remote working directory: {s.remote.account.home}" in res.text
        assert (tmp_path / "remote.bin").read_bytes() == data
        assert (tmp_path / "down.bin").read_bytes() == data
        assert s.records("sftp")
        wrote = s.records("file_done", path=f"{tmp_path}/remote.bin", op="write")[-1]
        read = s.records("file_done", path=f"{tmp_path}/remote.bin", op="read")[-1]
        assert wrote["bytes_written"] == len(data) and read["bytes_read"] == len(data)
        assert s.records("file", path=f"{tmp_path}/remote.bin", op="write")  # the record before the open
        # a failing command is a failure for sftp, as with OpenSSH's server
        res = await run(s.sftp(), input=f"get {tmp_path}/nonexistent {tmp_path}/x\n".encode())
        assert res.rc == 1 and "not found" in res.errtext.lower()


@pytest.mark.parametrize("legacy", [False, True], ids=["scp-sftp-mode", "scp-O-legacy"])
async def test_scp_both_ways(tmp_path, legacy):
    data = os.urandom(3 << 20)
    (tmp_path / "a.bin").write_bytes(data)
    async with serving(tmp_path) as s:
        res = await run(s.scp(tmp_path / "a.bin", remote_path(tmp_path / "b.bin"), legacy=legacy), timeout=60)
        assert res.rc == 0, res.errtext
        assert (tmp_path / "b.bin").read_bytes() == data
        res = await run(s.scp(remote_path(tmp_path / "b.bin"), tmp_path / "c.bin", legacy=legacy), timeout=60)
        assert res.rc == 0, res.errtext
        assert (tmp_path / "c.bin").read_bytes() == data
        via = "scp" if legacy else "sftp"
        assert s.records(via)
        assert s.records("file_done", via=via, path=f"{tmp_path}/b.bin", op="write")[-1]["bytes_written"] == len(data)
        assert s.records("file_done", via=via, path=f"{tmp_path}/b.bin", op="read")[-1]["bytes_read"] == len(data)
        res = await run(s.scp(remote_path(tmp_path / "missing"), tmp_path / "d.bin", legacy=legacy))
        assert res.rc != 0 and not (tmp_path / "d.bin").exists()
