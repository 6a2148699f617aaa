"""The exception hierarchy: every error a user can cause is a VhdError with a one-line message.

The CLI turns a VhdError into one line on stderr and its ``exit_code``; anything else escaping is
a bug in vhdtool. Messages name the file, the field and the offending value.
"""

from __future__ import annotations


class VhdError(Exception):
    """Base of every error vhdtool reports to a user."""

    exit_code = 1


class UsageError(VhdError):
    """The user asked for something that does not make sense (bad size, bad option value)."""

    exit_code = 64


class RefusedError(VhdError):
    """Refused for safety: the command would lose data or change what other disks read (merge into
    a parent other children use, shrink over stored data, a suspended VM's disk). An error (exit
    1), not a usage mistake: the same options are right for another disk."""


class NotVhdError(VhdError):
    """The file is not a VHD (no footer cookie at the end nor at offset 0)."""


class CorruptImageError(VhdError):
    """The file claims to be a VHD but its metadata cannot be trusted."""


class ChecksumError(CorruptImageError):
    """A footer or header checksum does not match its contents."""


class ParentError(VhdError):
    """A differencing disk's parent is missing, mismatched, or the chain loops."""


class ParentMissingError(ParentError):
    """No file a locator or the parent name points at exists: the chain cannot be read (the child's
    own metadata still can), and nothing about it can be called corrupt."""


class LockedError(VhdError):
    """Another process holds the image open for writing."""


class ReadOnlyError(VhdError):
    """A write was attempted on an image opened read-only."""


class IoError(VhdError):
    """Reading or writing the file failed (EIO, ENOSPC, ...): the message names the file."""


class SourceChangedError(IoError):
    """A source file shrank while it was being copied."""


def io_error(path: str, action: str, error: OSError) -> IoError:
    """The one wording of a failed file operation: 'PATH: read failed: Input/output error'.
    A factory for ``raise ... from`` in an except clause, so the data path pays nothing when
    the operation succeeds."""
    return IoError(f"{path}: {action} failed: {error.strerror or error}")
