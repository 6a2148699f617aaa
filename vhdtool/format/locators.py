"""Parent locators of differencing disks: decoding the eight entries, encoding new ones, and
turning them into candidate paths on this host.

Codes (docs/VHD-FORMAT.md): W2ru relative UTF-16LE, W2ku absolute UTF-16LE, MacX UTF-8 file:// URL,
Wi2r/Wi2k deprecated ASCII. Windows paths: backslashes become slashes, drive letters are dropped.
"""

from __future__ import annotations

import os
import re
from typing import NamedTuple

from vhdtool.format.rules import SECTOR
from vhdtool.format.sparselayout import round_up
from vhdtool.format.structs import EMPTY_LOCATOR_ENTRY, LOCATOR_SLOTS

RELATIVE_CODES = (b"W2ru", b"Wi2r")
ABSOLUTE_CODES = (b"W2ku", b"Wi2k", b"MacX")
KNOWN_CODES = RELATIVE_CODES + ABSOLUTE_CODES
EMPTY_CODE = b"\0\0\0\0"


class Locator(NamedTuple):
    slot: int
    code: bytes
    data_offset: int
    data_space: int
    """Bytes reserved for the path (the field may hold sectors or bytes: see ``data_space_bytes``)."""
    data_length: int
    path: str | None
    """The decoded path, None if the bytes could not be decoded."""

    @property
    def code_name(self) -> str:
        return self.code.decode("latin-1").rstrip("\0") or "-"


def data_space_bytes(value: int) -> int:
    """The spec says sectors, Windows and VirtualBox write bytes: a value below 512 is sectors."""
    return value * SECTOR if value < SECTOR else value


def decode_locator_data(code: bytes, data: bytes) -> str | None:
    try:
        if code in (b"W2ru", b"W2ku"):
            return data.decode("utf-16-le").rstrip("\0")
        if code == b"MacX":
            text = data.decode("utf-8").rstrip("\0")
            from urllib.parse import unquote, urlparse  # only Mac locators need it: spared at start-up

            parsed = urlparse(text)
            return unquote(parsed.path) if parsed.scheme == "file" else text
        if code in (b"Wi2r", b"Wi2k"):
            return data.decode("latin-1").rstrip("\0")
    except UnicodeDecodeError:
        return None
    return None


def encode_locator_data(code: bytes, path: str) -> bytes:
    if code in (b"W2ru", b"W2ku"):
        return path.encode("utf-16-le")
    if code == b"MacX":
        return ("file://" + path).encode("utf-8")
    return path.encode("latin-1", errors="replace")


def decode_parent_name(raw: bytes) -> str:
    """The header's Parent Unicode Name: UTF-16 big-endian, NUL padded."""
    text = raw.decode("utf-16-be", errors="replace")
    end = text.find("\0")
    return text if end < 0 else text[:end]


def encode_parent_name(name: str) -> bytes:
    raw = name.encode("utf-16-be")[:512]
    return raw + bytes(512 - len(raw))


def header_parent_name(parent_path: str) -> bytes:
    """The Parent Unicode Name a child gets: the parent's file name, as Windows writes it. Readers
    look for it beside the child (libvhdi's vhdimount joins it to the child's folder); the
    folder is the locators' business."""
    return encode_parent_name(os.path.basename(parent_path))


_DRIVE = re.compile(r"^[A-Za-z]:")


def host_path(windows_or_posix: str) -> str:
    """A stored path as this host understands it: backslashes to slashes, no drive letter."""
    p = windows_or_posix.replace("\\", "/")
    p = _DRIVE.sub("", p)
    return p


def candidate_paths(child_path: str, locators: list[Locator], header_name: str) -> list[str]:
    """Where the parent may be, in the order to try: relative locators, absolute ones, then the
    header's name (and every locator's file name) beside the child."""
    child_dir = os.path.dirname(os.path.abspath(child_path))
    out: list[str] = []

    def add(p: str) -> None:
        p = os.path.normpath(p)
        if "\0" in p:  # no file has such a name (and os.path.realpath raises on it)
            return
        if p not in out:
            out.append(p)

    ordered = [loc for loc in locators if loc.code in RELATIVE_CODES] + [
        loc for loc in locators if loc.code in ABSOLUTE_CODES
    ]
    for loc in ordered:
        if not loc.path:
            continue
        p = host_path(loc.path)
        if loc.code in RELATIVE_CODES and not os.path.isabs(p):
            add(os.path.join(child_dir, p))
        elif os.path.isabs(p):
            add(p)
        else:
            add(os.path.join(child_dir, p))
    for name in [header_name] + [loc.path or "" for loc in ordered]:
        base = os.path.basename(host_path(name)) if name else ""
        if base:
            add(os.path.join(child_dir, base))
    return out


def relative_windows_path(parent_path: str, child_path: str) -> str:
    """The W2ru form: '.\\parent.vhd' or '..\\dir\\parent.vhd' from the child's folder."""
    rel = os.path.relpath(os.path.abspath(parent_path), os.path.dirname(os.path.abspath(child_path)))
    rel = rel.replace("/", "\\")
    return rel if rel.startswith("..") else ".\\" + rel


class LocatorArea(NamedTuple):
    """The locators a child gets: a relative (W2ru) and an absolute (W2ku) path to its parent, as
    Windows writes them, and the bytes of their data, each padded to whole sectors."""

    data: bytes
    slots: tuple[tuple[bytes, int, int, int], ...]
    """(code, offset in ``data``, data length, data space in bytes) of each locator."""

    def entries(self, at: int) -> list[dict]:
        """The header's eight locator entries when ``data`` is stored at file offset ``at``."""
        used = [
            {
                "platform_code": code,
                "platform_data_space": space,  # bytes, as Windows and VirtualBox write it
                "platform_data_length": length,
                "reserved": 0,
                "platform_data_offset": at + offset,
            }
            for code, offset, length, space in self.slots
        ]
        return used + [EMPTY_LOCATOR_ENTRY] * (LOCATOR_SLOTS - len(used))


def locator_area(child_path: str, parent_path: str) -> LocatorArea:
    """The one builder of new parent locators (``create`` and ``relink`` share it)."""
    data, slots = bytearray(), []
    for code, text in (
        (b"W2ru", relative_windows_path(parent_path, child_path)),
        (b"W2ku", os.path.abspath(parent_path)),
    ):
        encoded = encode_locator_data(code, text)
        space = round_up(max(len(encoded), 1))
        slots.append((code, len(data), len(encoded), space))
        data += encoded + bytes(space - len(encoded))
    return LocatorArea(bytes(data), tuple(slots))
