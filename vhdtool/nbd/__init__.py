"""An NBD server exporting any BlockDevice: `vhdtool serve`, and the disk path of the runner.

The Python API other parts of vhdtool use:

- ``NbdServer``: asyncio server of named exports (``add_export(name, device)``), listening on a
  unix socket (``listen_unix``) or TCP (``listen_tcp``); ``switch_write_layer(name, device)``
  makes a new top the target of later requests atomically; ``close()``.
- ``ServerThread``: the same from synchronous code, the loop running in a background thread
  (``start_unix``/``start_tcp`` return once listening; ``switch_write_layer``; ``stop``).

Modules: ``protocol`` (wire constants), ``negotiation`` (handshake), ``transmission`` (requests
of one connection), ``channel`` (the socket: buffered reads, whole-reply sends from any thread),
``export`` (a device, its capabilities, concurrency and the switch), ``deviceio`` (what one
request does to a device), ``filemap`` and ``splice`` (zero-copy reads: where data lies in the
image files, and pipes that carry it to the socket), ``server``, ``serve`` (the CLI command).

How a read travels: the event loop reads the request; if the export's reads come from the page
cache it carries the read out at once (else a worker thread does), splicing the file pages and
the chunk header into a pipe, and the pipe into the socket; nothing is copied in Python.
"""

from vhdtool.nbd.export import Export
from vhdtool.nbd.server import NbdServer, ServerThread

__all__ = ["Export", "NbdServer", "ServerThread"]
