"""What this host can accelerate with: real KVM, a PVM-only /dev/kvm, or nothing.

Some hosts expose a ``/dev/kvm`` that cannot run ordinary guest kernels: PVM (the ``kvm_pvm``
module) runs only specially built paravirtualised guests, and the CPU shows no ``vmx``/``svm``
flag. QEMU started there with ``-accel kvm`` opens /dev/kvm fine and then never gets past the
kernel decompressor — so the probe must decide from the module and the CPU flags, never by
whether /dev/kvm opens.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass

from vhdtool.errors import UsageError, VhdError

DEFAULT_TSC_KHZ = 2_000_000


class HostKvm(enum.Enum):
    KVM = "kvm"
    """Hardware virtualisation that runs ordinary kernels."""
    PVM = "pvm"
    """/dev/kvm exists but runs only PVM guests."""
    NONE = "none"
    """No usable /dev/kvm."""


@dataclass(frozen=True, slots=True)
class Probe:
    kind: HostKvm
    reason: str
    """Why, in words for the user: 'kvm_pvm module loaded and no vmx/svm CPU flag'."""


@dataclass(frozen=True, slots=True)
class Accel:
    name: str
    """'kvm' or 'tcg': the QEMU accelerator."""
    reason: str

    def describe(self) -> str:
        return f"accelerator: {self.name} ({self.reason})"


def _cpu_flags(cpuinfo: str) -> set[str]:
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() == "flags":
                    return set(value.split())
    except OSError:
        pass
    return set()


def probe(dev_kvm: str = "/dev/kvm", sys_module: str = "/sys/module", cpuinfo: str = "/proc/cpuinfo") -> Probe:
    """Classify the host. The paths are parameters so that other hosts can be described in tests."""
    if not os.path.exists(dev_kvm):
        return Probe(HostKvm.NONE, f"no {dev_kvm}")
    if not os.access(dev_kvm, os.R_OK | os.W_OK):
        return Probe(HostKvm.NONE, f"{dev_kvm} exists but this user cannot open it (add the user to group kvm)")
    flags = _cpu_flags(cpuinfo)
    hardware = "vmx" in flags or "svm" in flags
    pvm = os.path.isdir(os.path.join(sys_module, "kvm_pvm"))
    if pvm:
        detail = "" if hardware else " and no vmx/svm CPU flag"
        return Probe(HostKvm.PVM, f"{dev_kvm} is PVM-only: kvm_pvm module loaded{detail}")
    if not hardware:
        return Probe(HostKvm.PVM, f"{dev_kvm} exists but the CPU shows no vmx/svm flag (no hardware virtualisation)")
    which = "vmx" if "vmx" in flags else "svm"
    return Probe(HostKvm.KVM, f"{dev_kvm} with hardware virtualisation ({which})")


def choose(requested: str, host: Probe | None = None) -> Accel:
    """The accelerator for ``--accel auto|kvm|tcg``; ``kvm`` on a host without real KVM fails
    with the reason, rather than starting a guest that would hang."""
    host = host or probe()
    if requested == "tcg":
        return Accel("tcg", "asked for with --accel tcg")
    if requested == "kvm":
        if host.kind is not HostKvm.KVM:
            raise VhdError(
                f"--accel kvm: this host cannot run ordinary guests under KVM: {host.reason}; "
                "a guest started there never gets past its kernel decompressor. Use --accel tcg (or auto)"
            )
        return Accel("kvm", host.reason)
    if requested != "auto":
        raise UsageError(f"--accel {requested!r}: choose auto, kvm or tcg")
    if host.kind is HostKvm.KVM:
        return Accel("kvm", f"auto: {host.reason}")
    return Accel("tcg", f"auto: {host.reason}")


def tsc_khz(cpuinfo: str = "/proc/cpuinfo") -> int:
    """The host's TSC frequency in kHz, which TCG guests read through rdtsc.

    A direct-boot kernel told ``tsc_early_khz=`` skips calibrating its clock against the
    emulated PIT, which under TCG stalls boot for seconds. ``cpu MHz`` is the TSC rate on hosts
    with a constant TSC; a wrong value only makes the guest's early clock run at the wrong speed.
    """
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() == "cpu MHz":
                    khz = int(float(value) * 1000)
                    if khz > 0:
                        return khz
    except (OSError, ValueError):
        pass
    return DEFAULT_TSC_KHZ
