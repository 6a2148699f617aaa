"""An NBD server exporting any BlockDevice: `vhdtool serve`, and the disk path of the runner.

The Python API other parts of vhdtool use:

- ``NbdServer``: asyncio server of named exports (``add_export(name, device)``), listening on a
  unix socket (``listen_unix``) or TCP (``listen_tcp``); ``switch_write_layer(name, device)``
  makes a new top the target of later requests atomically; ``close()``.
- ``ServerThread``: the same from synchronous code, the loop running in a background thread
  (``start_unix``/``start_tcp`` return once listening; ``switch_write_layer``; ``stop``).

Modules: ``protocol`` (wire constants), ``negotiation`` (handshake), ``transmission`` (requests
of one connection), ``export`` (a device, its capabilities, concurrency and the switch),
``deviceio`` (blocking device work for one request), ``server``, ``serve`` (the CLI command).
"""

from vhdtool.nbd.export import Export
from vhdtool.nbd.server import NbdServer, ServerThread

__all__ = ["Export", "NbdServer", "ServerThread"]
