"""Consistent snapshots of running guests: the coordinator and its hypervisor plugins.

``vhdtool snapshot create`` takes one consistency group through discover -> prepare (new
differencing layers, space check) -> freeze all in parallel under one deadline -> switch every
disk's write layer -> thaw all -> report, rolling the whole group back on any failure, with a
watchdog process for the coordinator's own death.

Modules: ``plugin`` (the Hypervisor base class), ``registry`` (entry points), ``coordinator``
(the protocol), ``parallel`` (one call per guest with a deadline), ``layers`` (naming, space,
creating and removing layers), ``watchdog``, ``report`` and ``catalogue`` (what was done, and
the record of groups), ``manage`` (merge/discard), ``control`` (the layer-switch endpoint a
disk-serving process hosts), ``qga``/``jsonsock`` (the guest agent's client), ``qmp`` (a blocking
QMP client over ``run.qmp``), ``plugins/`` (runner, libvirt, simulated). The commands' bodies are
in ``vhdtool.cli``.

A third-party hypervisor is a subclass of ``vhdtool.vss.plugin.Hypervisor`` declared in its own
package's metadata::

    [project.entry-points."vhdtool.hypervisors"]
    myhv = "mypackage.hv:MyHypervisor"

after which ``vhdtool snapshot create --hypervisor myhv`` uses it.
"""
