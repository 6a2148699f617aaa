"""Malformed and hostile clients: error replies or a closed connection, never a dead server.

Every test ends by checking that a real client still reads the right bytes; the autouse
fixture in conftest fails any test in which the server logged an internal error.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import struct
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.helpers import need, run
from tests.nbd.conftest import DATA_PATHS, SIZE, Chain, Serve, socket_of
from tests.nbd.rawclient import Closed, RawClient
from vhdtool.format.blockdev import RawFile
from vhdtool.nbd import protocol as p

MiB = 1 << 20


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    """A 64 MiB sparse raw disk with a marker at 1 MiB."""
    path = tmp_path / "disk.raw"
    with open(path, "wb") as f:
        f.truncate(SIZE)
        f.seek(MiB)
        f.write(b"marker" * 1000)
    return path


def still_serves(uri: str, want: bytes, tmp_path: Path) -> None:
    out = tmp_path / "check.raw"
    run(need("qemu-img"), "convert", "-f", "raw", "-O", "raw", uri, out)
    assert out.read_bytes() == want
    out.unlink()


def test_garbage_at_the_handshake(raw: Path, serve: Serve, tmp_path: Path) -> None:
    _, uri = serve(RawFile(raw), read_only=True)
    rng = random.Random(6)
    for n in range(60):
        with RawClient(socket_of(uri), timeout=10) as c:
            c.recv_exact(18)
            garbage = rng.randbytes(rng.choice([1, 3, 4, 20, 200, 5000]))
            if n % 3 == 1:  # valid client flags, then a garbage option stream
                garbage = struct.pack(">I", 3) + garbage
            elif n % 3 == 2:  # a valid option header announcing a random length, then garbage
                garbage = struct.pack(">IQII", 3, p.IHAVEOPT, rng.randrange(1 << 32), len(garbage)) + garbage
            with contextlib.suppress(OSError):
                c.send(garbage)
    still_serves(uri, raw.read_bytes(), tmp_path)


def test_option_errors_keep_the_negotiation_going(raw: Path, serve: Serve, tmp_path: Path) -> None:
    _, uri = serve(RawFile(raw), read_only=True, name="disk")
    with RawClient(socket_of(uri)) as c:
        c.greeting()
        c.option(p.Opt.LIST, b"x")
        assert c.replies_until_final() == [(p.Rep.ERR_INVALID, b"malformed option")]
        c.option(p.Opt.LIST)
        assert c.replies_until_final() == [(p.Rep.SERVER, struct.pack(">I", 4) + b"disk"), (p.Rep.ACK, b"")]
        c.option(p.Opt.LIST, bytes(1 << 20))  # over the 64 KiB option limit: skipped, refused
        assert c.replies_until_final()[0][0] == p.Rep.ERR_TOO_BIG
        c.option(99)
        assert c.replies_until_final()[0][0] == p.Rep.ERR_UNSUP
        c.option(p.Opt.STARTTLS)
        assert c.replies_until_final()[0][0] == p.Rep.ERR_UNSUP
        c.option(p.Opt.GO, struct.pack(">I", 1000) + b"disk")  # name length past the payload
        assert c.replies_until_final()[0][0] == p.Rep.ERR_INVALID
        c.option(p.Opt.GO, struct.pack(">I", 3) + b"nop" + struct.pack(">H", 0))
        assert c.replies_until_final()[0][0] == p.Rep.ERR_UNKNOWN
        c.option(p.Opt.GO, struct.pack(">I", 4) + b"disk" + struct.pack(">HH", 5, 0))  # 5 infos, 1 sent
        assert c.replies_until_final()[0][0] == p.Rep.ERR_INVALID
        query = struct.pack(">I", 4) + b"disk" + struct.pack(">II", 1, 15) + b"base:allocation"
        c.option(p.Opt.SET_META_CONTEXT, query)  # before structured replies: refused
        assert c.replies_until_final()[0][0] == p.Rep.ERR_INVALID
        c.option(p.Opt.LIST_META_CONTEXT, query)
        replies = c.replies_until_final()
        assert replies[0] == (p.Rep.META_CONTEXT, struct.pack(">I", 1) + b"base:allocation")
        c.option(p.Opt.INFO, struct.pack(">I", 0) + struct.pack(">HH", 1, p.Info.NAME))
        replies = dict(c.replies_until_final())
        assert replies[p.Rep.INFO]  # the default export answers to the empty name
        c.option(p.Opt.GO, struct.pack(">I", 4) + b"disk" + struct.pack(">H", 0))
        assert c.replies_until_final()[-1][0] == p.Rep.ACK
        c.request(p.Cmd.READ, MiB, 6)
        assert c.reply(6).payload == b"marker"
    for framing_error in (
        struct.pack(">I", 1 << 7),  # unknown client flags
        struct.pack(">IQII", 3, 0x1234, p.Opt.LIST, 0),  # bad option magic
        struct.pack(">IQII", 3, p.IHAVEOPT, p.Opt.EXPORT_NAME, 3) + b"nop",  # unknown name, old style
    ):
        with RawClient(socket_of(uri)) as c:
            c.recv_exact(18)
            c.send(framing_error)
            assert c.closed_by_server()
    still_serves(uri, raw.read_bytes(), tmp_path)


@pytest.mark.parametrize("structured", [True, False])
def test_bad_requests_get_errors(raw: Path, serve: Serve, tmp_path: Path, structured: bool) -> None:
    _, uri = serve(RawFile(raw, writable=True))
    with RawClient(socket_of(uri)) as c:
        size, flags = c.go(structured=structured, allocation=structured)
        assert size == SIZE and flags & p.TransmissionFlag.SEND_WRITE_ZEROES
        assert not flags & p.TransmissionFlag.SEND_TRIM  # a raw file offers no trim: not promised
        cases = [
            (p.Cmd.READ, SIZE - 10, 11, b"", p.Errno.EINVAL),
            (p.Cmd.READ, (1 << 64) - 1, 1, b"", p.Errno.EINVAL),
            (p.Cmd.READ, 0, 33 << 20, b"", p.Errno.EOVERFLOW if structured else p.Errno.EINVAL),
            (p.Cmd.WRITE, SIZE - 1, 2, b"ab", p.Errno.ENOSPC),
            (p.Cmd.WRITE_ZEROES, SIZE, 1, b"", p.Errno.ENOSPC),
            (p.Cmd.TRIM, 0, 4096, b"", p.Errno.EINVAL),
            (p.Cmd.RESIZE, 0, 0, b"", p.Errno.EINVAL),
            (42, 0, 4096, b"", p.Errno.EINVAL),
        ]
        if not structured:
            cases.append((p.Cmd.BLOCK_STATUS, 0, 4096, b"", p.Errno.EINVAL))
        for handle, (cmd, offset, length, payload, errno) in enumerate(cases, 100):
            c.request(cmd, offset, length, handle=handle, payload=payload)
            reply = c.reply()
            assert (reply.handle, reply.error) == (handle, errno), (cmd, offset, length)
        c.request(p.Cmd.READ, MiB, 6, handle=7, flags=p.CmdFlag.DF)
        reply = c.reply(6)
        assert reply.handle == 7 and reply.payload[-6:] == b"marker"
        c.request(p.Cmd.DISC)
        assert c.closed_by_server()
    assert raw.read_bytes()[SIZE - 4096 :] == bytes(4096)
    still_serves(uri, raw.read_bytes(), tmp_path)


def test_read_only_export_refuses_writes(raw: Path, serve: Serve, tmp_path: Path) -> None:
    before = raw.read_bytes()
    _, uri = serve(RawFile(raw, writable=True), read_only=True)
    with RawClient(socket_of(uri)) as c:
        _, flags = c.go()
        assert flags & p.TransmissionFlag.READ_ONLY
        for handle, cmd in enumerate((p.Cmd.WRITE, p.Cmd.WRITE_ZEROES, p.Cmd.TRIM), 1):
            c.request(cmd, 0, 3, handle=handle, payload=b"abc" if cmd == p.Cmd.WRITE else b"")
            assert c.reply().error == p.Errno.EPERM
        c.request(p.Cmd.FLUSH, handle=9)
        assert c.reply().error == 0
    run(need("qemu-io"), "-f", "raw", "-c", "write 0 512", uri, check=False)
    assert raw.read_bytes() == before


def test_framing_errors_close_only_that_connection(raw: Path, serve: Serve, tmp_path: Path) -> None:
    before = raw.read_bytes()
    _, uri = serve(RawFile(raw, writable=True))
    with RawClient(socket_of(uri)) as c:
        c.go()
        c.request(p.Cmd.READ, 0, 512, magic=0xDEADBEEF)
        assert c.closed_by_server()
    with RawClient(socket_of(uri)) as c:  # a write payload over the limit cannot be swallowed
        c.go()
        c.request(p.Cmd.WRITE, 0, 64 << 20, payload=b"x" * 4096)
        assert c.closed_by_server()
    with RawClient(socket_of(uri)) as c:  # disconnect inside a write payload: nothing is written
        c.go()
        c.request(p.Cmd.WRITE, 2 * MiB, 100000, payload=b"y" * 50000)
    with RawClient(socket_of(uri)) as c:  # disconnect inside a request header
        c.go()
        c.send(p.REQUEST.pack(p.REQUEST_MAGIC, 0, p.Cmd.READ, 1, 0, 512)[:11])
    with RawClient(socket_of(uri)) as c:  # replies nobody reads: the server stops reading, no more
        c.go()
        c.send(
            b"".join(p.REQUEST.pack(p.REQUEST_MAGIC, p.CmdFlag.DF, p.Cmd.READ, h, MiB - 4096, MiB) for h in range(200))
        )
        for _ in range(200):
            assert c.reply().payload[8 + 4096 : 8 + 4102] == b"marker"
    still_serves(uri, before, tmp_path)
    assert raw.read_bytes() == before


def greeted_sockets(uri: str, count: int) -> list[socket.socket]:
    """``count`` connections that read the server's greeting and then say nothing."""
    idle = []
    for _ in range(count):
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(30)
        s.connect(socket_of(uri))
        assert s.recv(8) == b"NBDMAGIC"
        idle.append(s)
    return idle


def test_idle_handshakes_time_out(raw: Path, serve: Serve, tmp_path: Path) -> None:
    _, uri = serve(RawFile(raw), read_only=True, handshake_timeout=0.5)
    idle = greeted_sockets(uri, 8)
    for s in idle:  # each is dropped for not finishing its handshake in time
        while s.recv(4096):
            pass
        s.close()
    still_serves(uri, raw.read_bytes(), tmp_path)


def test_idle_handshakes_make_way_for_a_real_client(raw: Path, serve: Serve, tmp_path: Path) -> None:
    """More idle sockets than the handshake budget: each newcomer replaces the oldest unfinished
    handshake, so a real client that arrives last is served (the deadline is long here: the
    budget, not the deadline, lets it in)."""
    _, uri = serve(RawFile(raw), read_only=True, handshake_timeout=60, max_handshakes=4)
    idle = greeted_sockets(uri, 10)
    with RawClient(socket_of(uri)) as c:
        c.go()
        c.request(p.Cmd.READ, 0, 4096)
        assert c.chunks()
    for s in idle[:6]:  # the oldest were dropped to make room
        while s.recv(4096):
            pass
    for s in idle:
        s.close()
    still_serves(uri, raw.read_bytes(), tmp_path)


def test_excess_serving_connections_are_refused(raw: Path, serve: Serve, tmp_path: Path) -> None:
    _, uri = serve(RawFile(raw), read_only=True, max_connections=2)
    clients = [RawClient(socket_of(uri)) for _ in range(2)]
    try:
        for c in clients:
            c.go()
        with RawClient(socket_of(uri)) as excess:  # over max_connections: closed without a greeting
            assert excess.sock.recv(18) == b""
    finally:
        for c in clients:
            c.close()
    still_serves(uri, raw.read_bytes(), tmp_path)


def test_unread_replies_of_many_clients_are_capped(raw: Path, serve: Serve, tmp_path: Path) -> None:
    """Clients that send reads and never read the replies: the server stops admitting requests at
    its server-wide budget (back pressure), and every reply arrives, right, once they read."""
    limit = 8 * MiB
    thread, uri = serve(RawFile(raw), read_only=True, reply_memory=limit)
    want = raw.read_bytes()
    clients = []
    for _ in range(6):
        c = RawClient(socket_of(uri))
        c.go(structured=False)
        c.send(b"".join(p.REQUEST.pack(p.REQUEST_MAGIC, 0, p.Cmd.READ, h, h * MiB, MiB) for h in range(24)))
        clients.append(c)
    peak = 0
    for _ in range(50):  # the server works through what it admitted, then waits on the budget
        peak = max(peak, thread.server.reply_memory_used)
        time.sleep(0.02)
    assert 0 < peak <= limit + 6 * MiB  # the budget, and at most one request per connection beyond it
    for c in clients:
        for _ in range(24):
            r = c.reply(read_length=MiB)
            assert not r.error
            assert r.payload == want[r.handle * MiB : (r.handle + 1) * MiB]
        c.close()
    still_serves(uri, want, tmp_path)


def read_back(c: RawClient, offset: int, length: int, handle: int) -> bytes:
    out = bytearray(length)
    for at in range(0, length, 32 << 20):
        n = min(32 << 20, length - at)
        c.request(p.Cmd.READ, offset + at, n, handle=handle)
        for r in c.chunks():
            assert not r.error
            if r.kind == p.ReplyType.OFFSET_DATA:
                start = struct.unpack(">Q", r.payload[:8])[0] - offset
                out[start : start + len(r.payload) - 8] = r.payload[8:]
    return bytes(out)


@pytest.mark.parametrize("options", DATA_PATHS)
def test_fuzzed_requests_against_a_model(chain: Chain, serve: Serve, tmp_path: Path, options: dict) -> None:
    """Random requests with a valid magic on the VHD chain; successful writes go into a model of
    the disk, which the image must equal at the end (no byte written outside a request)."""
    model = bytearray(chain.expected)
    thread, uri = serve(chain.top, **options)
    rng = random.Random(606)
    edges = [0, 1, 511, 512, 4095, MiB, 2 * MiB - 1, 2 * MiB, SIZE - 4096, SIZE - 1, SIZE, SIZE + 1, 1 << 40]
    c = RawClient(socket_of(uri))
    c.go()
    outcomes: Counter[tuple[int, bool]] = Counter()
    for handle in range(400):
        cmd = rng.choice([0, 0, 1, 1, 1, 3, 4, 5, 6, 6, 7, 8, 9, 200])
        flags = rng.choice([0, 0, 1, 2, 4, 8, 0xFFFF])
        offset = rng.choice(edges) + rng.choice([0, 0, -1, 1, rng.randrange(MiB)])
        offset = max(0, offset) % (1 << 64)
        length = rng.choice([0, 1, 512, 4097, 70000, MiB + 3, 33 << 20, rng.randrange(3 * MiB)])
        payload = b""
        if cmd == p.Cmd.WRITE:
            length = min(length, 2 * MiB)
            payload = rng.randbytes(length)
        c.request(cmd, offset, length, flags=flags, handle=handle, payload=payload)
        chunks = c.chunks()
        assert {r.handle for r in chunks} == {handle}
        error = next((r.error for r in chunks if r.error), 0)
        outcomes[cmd, error == 0] += 1
        in_range = offset + length <= SIZE
        if cmd in (p.Cmd.WRITE, p.Cmd.WRITE_ZEROES, p.Cmd.READ) and in_range and length <= 32 << 20:
            assert error == 0, (cmd, offset, length, error)
        if error:
            continue
        if cmd == p.Cmd.WRITE:
            model[offset : offset + length] = payload
        elif cmd == p.Cmd.WRITE_ZEROES:
            model[offset : offset + length] = bytes(length)
        elif cmd == p.Cmd.TRIM:
            # a trimmed range reads back undefined (here: zeros in whole pages); the model takes
            # what the server reads there now, everything outside the range must still match
            model[offset : offset + length] = read_back(c, offset, length, handle + 100000)
        elif cmd == p.Cmd.READ:
            got = bytearray(length)
            for r in chunks:
                if r.kind == p.ReplyType.OFFSET_DATA:
                    at = struct.unpack(">Q", r.payload[:8])[0] - offset
                    got[at : at + len(r.payload) - 8] = r.payload[8:]
            assert got == model[offset : offset + length]
    # the fuzzer reached both sides of the main commands
    assert min(outcomes[cmd, ok] for cmd in (0, 1, 6) for ok in (True, False)) >= 5, outcomes
    for n in range(20):  # and raw garbage after the handshake
        with RawClient(socket_of(uri)) as g:
            g.go()
            g.send(rng.randbytes(n * 50 + 1))
    c.close()
    still_serves(uri, bytes(model), tmp_path)
    thread.stop()
    import vhdtool

    with vhdtool.open(chain.top) as image:
        assert image.pread(0, SIZE) == model


def test_stale_socket_is_replaced_and_files_are_not(raw: Path, serve: Serve, tmp_path: Path) -> None:
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(tmp_path / "nbd1.sock"))
    stale.close()  # the file stays, nobody listens
    thread, uri = serve(RawFile(raw), read_only=True)
    still_serves(uri, raw.read_bytes(), tmp_path)
    thread.stop()
    assert not os.path.exists(socket_of(uri))
    from vhdtool.errors import UsageError
    from vhdtool.nbd import NbdServer, ServerThread

    (tmp_path / "file.sock").write_text("not a socket")
    with RawFile(raw) as dev, ServerThread(NbdServer()) as thread:
        thread.server.add_export("", dev)
        with pytest.raises(UsageError, match="not a socket"):
            thread.start_unix(tmp_path / "file.sock")


def test_closed_client_socket_mid_reply(raw: Path, serve: Serve, tmp_path: Path) -> None:
    _, uri = serve(RawFile(raw), read_only=True)
    for _ in range(5):
        c = RawClient(socket_of(uri))
        c.go()
        for handle in range(20):
            c.request(p.Cmd.READ, 0, 8 * MiB, handle=handle, flags=p.CmdFlag.DF)
        with contextlib.suppress(Closed):
            c.recv_exact(100)
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()  # reset while the server is still sending
    still_serves(uri, raw.read_bytes(), tmp_path)
