"""`vhdtool serve` as a user runs it: prints the URI, serves real clients, stops on a signal."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import vhdtool
from tests.helpers import VHDTOOL, assert_clean_error, digest, need, run
from tests.helpers import vhdtool as vhdtool_cli
from tests.nbd.conftest import Chain, socket_of

MiB = 1 << 20


@contextmanager
def serving(*args: str | Path, env: dict[str, str] | None = None) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Start `vhdtool serve ARGS`, yield (process, uri) once it printed the URI; kill it if left running."""
    proc = subprocess.Popen(
        [*VHDTOOL, "serve", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    try:
        uri = proc.stdout.readline().strip() if proc.stdout else ""
        assert uri, f"serve printed no URI: {proc.communicate(timeout=60)}"
        yield proc, uri
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> str:
    """Signal the server, wait for it; returns stderr after checking a clean exit."""
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
    return err


def test_serve_a_chain_on_a_unix_socket(chain: Chain, tmp_path: Path) -> None:
    parents = {p: digest(p) for p in (chain.base, chain.mid)}
    with serving(chain.top, "--socket", tmp_path / "s.sock") as (proc, uri):
        assert uri == f"nbd+unix:///?socket={tmp_path}/s.sock"
        run(need("qemu-img"), "convert", "-f", "raw", "-O", "raw", uri, tmp_path / "got.raw")
        assert (tmp_path / "got.raw").read_bytes() == chain.expected
        run(need("qemu-io"), "-f", "raw", "-c", "write -P 0x99 40M 1M", uri)
        stop(proc)
    assert not os.path.exists(socket_of(uri))
    with vhdtool.open(chain.top) as image:
        assert image.pread(40 * MiB, MiB) == b"\x99" * MiB
    assert parents == {p: digest(p) for p in (chain.base, chain.mid)}


def test_serve_read_only_named_export_over_tcp(chain: Chain, tmp_path: Path) -> None:
    before = digest(chain.top)
    args = (chain.top, "--read-only", "--export-name", "disk one", "--bind", "127.0.0.1", "--port", "0")
    with serving(*args) as (proc, uri):
        assert uri.startswith("nbd://127.0.0.1:") and uri.endswith("/disk%20one")
        listing = run(need("nbdinfo"), "--list", uri).stdout
        assert 'export="disk one"' in listing and "is_read_only: true" in listing
        write = run(need("qemu-io"), "-f", "raw", "-c", "write 0 512", uri, check=False)
        assert write.returncode != 0 or "failed" in write.stdout + write.stderr
        run(need("nbdcopy"), uri, tmp_path / "got.raw")
        assert (tmp_path / "got.raw").read_bytes() == chain.expected
        stop(proc, signal.SIGINT)
    assert digest(chain.top) == before


def test_serve_snapshot_discards_writes(chain: Chain, tmp_path: Path) -> None:
    before = {p: digest(p) for p in (chain.base, chain.mid, chain.top)}
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    with serving(chain.top, "--snapshot", "--socket", tmp_path / "s.sock", env={"TMPDIR": str(scratch)}) as (
        proc,
        uri,
    ):
        assert len(list(scratch.iterdir())) == 1  # the temporary layer
        run(need("qemu-io"), "-f", "raw", "-c", "write -P 0x5a 0 3M", uri)
        check = run(need("qemu-io"), "-f", "raw", "-c", "read -P 0x5a 0 3M", "-c", "read -P 0x88 31M 5000", uri)
        assert "Pattern verification failed" not in check.stdout
        stop(proc)
    assert list(scratch.iterdir()) == []
    assert before == {p: digest(p) for p in (chain.base, chain.mid, chain.top)}


def test_serve_bad_input(chain: Chain, tmp_path: Path) -> None:
    assert_clean_error(vhdtool_cli("serve", tmp_path / "missing.vhd", "--socket", tmp_path / "s.sock"), 1)
    assert_clean_error(vhdtool_cli("serve", chain.top, "--socket", tmp_path / "s.sock", "--port", "1"), 64)
    (tmp_path / "plain.txt").write_text("not a disk")
    assert_clean_error(vhdtool_cli("serve", tmp_path / "plain.txt", "--socket", tmp_path / "s.sock"), 1)
    with serving(chain.top, "--socket", tmp_path / "s.sock") as (proc, _):
        # a second writer on the same image is refused; so is a second server on the same socket
        assert_clean_error(vhdtool_cli("serve", chain.top, "--socket", tmp_path / "t.sock"), 1)
        assert_clean_error(vhdtool_cli("serve", chain.top, "--read-only", "--socket", tmp_path / "s.sock"))
        stop(proc)
