"""NBD wire constants and packers, as named in the protocol document (nbd's doc/proto.md).

Pure: no sockets, no devices. Every number that goes on the wire is defined here once; the
negotiation and transmission modules only call the packers below.
"""

from __future__ import annotations

import struct
from enum import IntEnum, IntFlag

# Handshake: the server opens with NBDMAGIC, IHAVEOPT and its handshake flags.
NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
OPTION_REPLY_MAGIC = 0x3E889045565A9

# Transmission phase magics.
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF


# Flags and numbered names in the order proto.md gives them: a flag's bit is its position in
# the list (the first is 1 << 0), a command's or option's number is its position from ``start``.
HandshakeFlag = IntFlag("HandshakeFlag", "FIXED_NEWSTYLE NO_ZEROES")
ClientFlag = IntFlag("ClientFlag", "FIXED_NEWSTYLE NO_ZEROES")
TransmissionFlag = IntFlag(
    "TransmissionFlag",
    "HAS_FLAGS READ_ONLY SEND_FLUSH SEND_FUA ROTATIONAL SEND_TRIM SEND_WRITE_ZEROES SEND_DF CAN_MULTI_CONN"
    " SEND_RESIZE SEND_CACHE SEND_FAST_ZERO",
)
Opt = IntEnum(
    "Opt",
    "EXPORT_NAME ABORT LIST PEEK_EXPORT STARTTLS INFO GO STRUCTURED_REPLY LIST_META_CONTEXT SET_META_CONTEXT"
    " EXTENDED_HEADERS",
)
Info = IntEnum("Info", "EXPORT NAME DESCRIPTION BLOCK_SIZE", start=0)
Cmd = IntEnum("Cmd", "READ WRITE DISC FLUSH TRIM CACHE WRITE_ZEROES BLOCK_STATUS RESIZE", start=0)
CmdFlag = IntFlag("CmdFlag", "FUA NO_HOLE DF REQ_ONE FAST_ZERO")


class Rep(IntEnum):
    ACK = 1
    SERVER = 2
    INFO = 3
    META_CONTEXT = 4
    ERR_UNSUP = (1 << 31) + 1
    ERR_POLICY = (1 << 31) + 2
    ERR_INVALID = (1 << 31) + 3
    ERR_PLATFORM = (1 << 31) + 4
    ERR_TLS_REQD = (1 << 31) + 5
    ERR_UNKNOWN = (1 << 31) + 6
    ERR_SHUTDOWN = (1 << 31) + 7
    ERR_BLOCK_SIZE_REQD = (1 << 31) + 8
    ERR_TOO_BIG = (1 << 31) + 9


class ReplyType(IntEnum):
    NONE = 0
    OFFSET_DATA = 1
    OFFSET_HOLE = 2
    BLOCK_STATUS = 5
    ERROR = (1 << 15) + 1
    ERROR_OFFSET = (1 << 15) + 2


REPLY_FLAG_DONE = 1 << 0


class Errno(IntEnum):
    """Error values on the wire: the protocol fixes these numbers whatever the host's errno is."""

    EPERM = 1
    EIO = 5
    ENOMEM = 12
    EINVAL = 22
    ENOSPC = 28
    EOVERFLOW = 75
    ENOTSUP = 95
    ESHUTDOWN = 108


# base:allocation status bits.
STATE_HOLE = 1 << 0
STATE_ZERO = 1 << 1
BASE_ALLOCATION = "base:allocation"

_HELLO = struct.Struct(">QQH")
OPTION_HEADER = struct.Struct(">QII")  # IHAVEOPT, option, length
_OPTION_REPLY = struct.Struct(">QIII")  # magic, option, reply type, length
REQUEST = struct.Struct(">IHHQQI")  # magic, flags, type, handle (cookie), offset, length
_SIMPLE_REPLY = struct.Struct(">IIQ")  # magic, error, handle
_CHUNK = struct.Struct(">IHHQI")  # magic, flags, type, handle, length
_U64 = struct.Struct(">Q")
_HOLE = struct.Struct(">QI")
_DESCRIPTOR = struct.Struct(">II")


def hello(flags: HandshakeFlag) -> bytes:
    return _HELLO.pack(NBDMAGIC, IHAVEOPT, flags)


def option_reply(option: int, reply: Rep, payload: bytes = b"") -> bytes:
    return _OPTION_REPLY.pack(OPTION_REPLY_MAGIC, option, reply, len(payload)) + payload


def info_export(size: int, flags: int) -> bytes:
    return struct.pack(">HQH", Info.EXPORT, size, flags)


def info_block_size(minimum: int, preferred: int, maximum: int) -> bytes:
    return struct.pack(">HIII", Info.BLOCK_SIZE, minimum, preferred, maximum)


def info_text(kind: Info, text: str) -> bytes:
    return struct.pack(">H", kind) + text.encode()


def server_entry(name: str) -> bytes:
    raw = name.encode()
    return struct.pack(">I", len(raw)) + raw


def meta_context(context_id: int, name: str) -> bytes:
    return struct.pack(">I", context_id) + name.encode()


def simple_reply(handle: int, error: int = 0) -> bytes:
    return _SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, error, handle)


def chunk_header(handle: int, kind: ReplyType, length: int, done: bool) -> bytes:
    return _CHUNK.pack(STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE if done else 0, kind, handle, length)


def data_chunk_header(handle: int, offset: int, length: int, done: bool) -> bytes:
    """Header of an OFFSET_DATA chunk; the ``length`` data bytes follow it."""
    return chunk_header(handle, ReplyType.OFFSET_DATA, 8 + length, done) + _U64.pack(offset)


def hole_chunk(handle: int, offset: int, length: int, done: bool) -> bytes:
    return chunk_header(handle, ReplyType.OFFSET_HOLE, _HOLE.size, done) + _HOLE.pack(offset, length)


def error_chunk(handle: int, error: int, message: str = "") -> bytes:
    text = message.encode()[:4096]
    payload = struct.pack(">IH", error, len(text)) + text
    return chunk_header(handle, ReplyType.ERROR, len(payload), True) + payload


def done_chunk(handle: int) -> bytes:
    return chunk_header(handle, ReplyType.NONE, 0, True)


def block_status_chunk(handle: int, context_id: int, runs: list[tuple[int, int]]) -> bytes:
    """One BLOCK_STATUS chunk for one context: ``runs`` are (length, status flags)."""
    payload = struct.pack(">I", context_id) + b"".join(_DESCRIPTOR.pack(n, f) for n, f in runs)
    return chunk_header(handle, ReplyType.BLOCK_STATUS, len(payload), True) + payload
