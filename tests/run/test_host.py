"""The host probe decides from the kvm_pvm module and the CPU flags, never from /dev/kvm opening;
``--accel kvm`` on a host without real KVM is refused with the reason."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vhdtool.errors import UsageError, VhdError
from vhdtool.run import host
from vhdtool.run.host import HostKvm


def fake_host(tmp: Path, *, dev_kvm: bool, modules: list[str], flags: str, mhz: str = "2600.000") -> dict[str, str]:
    """A /dev/kvm, /sys/module and /proc/cpuinfo of some other host, as files in ``tmp``."""
    dev = tmp / "kvm"
    if dev_kvm:
        dev.touch(mode=0o600)
    sysmod = tmp / "module"
    sysmod.mkdir()
    for m in modules:
        (sysmod / m).mkdir()
    cpuinfo = tmp / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\ncpu MHz\t\t: {mhz}\nflags\t\t: fpu tsc {flags} sse2\n\n")
    return {"dev_kvm": str(dev), "sys_module": str(sysmod), "cpuinfo": str(cpuinfo)}


@pytest.mark.parametrize(
    ("dev_kvm", "modules", "flags", "kind", "words"),
    [
        (True, ["kvm", "kvm_intel"], "vmx", HostKvm.KVM, "vmx"),
        (True, ["kvm", "kvm_amd"], "svm", HostKvm.KVM, "svm"),
        (True, ["kvm", "kvm_pvm"], "hypervisor", HostKvm.PVM, "kvm_pvm module loaded and no vmx/svm"),
        (True, ["kvm", "kvm_pvm"], "vmx", HostKvm.PVM, "kvm_pvm"),  # PVM even where the CPU could do more
        (True, ["kvm"], "hypervisor", HostKvm.PVM, "no vmx/svm"),
        (False, ["kvm", "kvm_intel"], "vmx", HostKvm.NONE, "no "),
    ],
)
def test_probe_classifies_hosts(
    tmp_path: Path, dev_kvm: bool, modules: list[str], flags: str, kind: HostKvm, words: str
) -> None:
    probe = host.probe(**fake_host(tmp_path, dev_kvm=dev_kvm, modules=modules, flags=flags))
    assert probe.kind is kind
    assert words in probe.reason


def test_auto_uses_kvm_only_on_real_hardware_virtualisation(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    real = host.probe(**fake_host(tmp_path / "a", dev_kvm=True, modules=["kvm_intel"], flags="vmx"))
    pvm = host.probe(**fake_host(tmp_path / "b", dev_kvm=True, modules=["kvm_pvm"], flags=""))
    assert host.choose("auto", real).name == "kvm"
    chosen = host.choose("auto", pvm)
    assert chosen.name == "tcg" and "PVM" in chosen.describe()
    assert host.choose("tcg", real).name == "tcg"
    assert host.choose("kvm", real).name == "kvm"
    with pytest.raises(VhdError, match=r"--accel kvm: .*kvm_pvm.*Use --accel tcg"):
        host.choose("kvm", pvm)
    with pytest.raises(UsageError):
        host.choose("xen", real)


def test_this_host_probe_agrees_with_its_module_list() -> None:
    probe = host.probe()
    if os.path.isdir("/sys/module/kvm_pvm"):
        assert probe.kind is HostKvm.PVM
    if not os.path.exists("/dev/kvm"):
        assert probe.kind is HostKvm.NONE


def test_tsc_khz_from_cpuinfo(tmp_path: Path) -> None:
    files = fake_host(tmp_path, dev_kvm=False, modules=[], flags="", mhz="2899.998")
    assert host.tsc_khz(files["cpuinfo"]) == 2899998
    assert host.tsc_khz(str(tmp_path / "missing")) == host.DEFAULT_TSC_KHZ
