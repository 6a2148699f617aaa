"""Bad input and broken set-ups: one error line, the documented exit code, nothing left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

import vhdtool
from tests.helpers import assert_clean_error
from tests.run.conftest import Env, Guest, build_root_image
from vhdtool.run import host


@pytest.fixture
def disk(env: Env) -> Path:
    path = env.tmp / "d.vhd"
    vhdtool.create(path, size=8 << 20)
    return path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.vhd"], "missing.vhd: no such image file"),
        (["{disk}", "--kernel", "/no/vmlinuz"], "--kernel /no/vmlinuz: no such file"),
        (["{disk}", "--initrd", "/etc/hostname"], "--initrd and --append need --kernel"),
        (["{disk}", "--kernel", "/etc/hostname", "--expect", "("], "--expect '(': not a regular expression"),
        (["{disk}", "--kernel", "/etc/hostname", "--memory", "1K"], "--memory 1K: give at least 64M"),
        (["{disk}", "--kernel", "/etc/hostname", "--name", "a/b"], "--name 'a/b'"),
        (["{disk}", "--kernel", "/etc/hostname", "--qmp", "{disk}"], "exists already"),
        (["{disk}", "--kernel", "/etc/hostname", "--timeout", "0"], "--timeout 0: must be positive"),
        (["{disk}"], "no boot sector"),  # a blank disk and no --kernel
    ],
)
def test_usage_errors_exit_64(env: Env, disk: Path, args: list[str], message: str) -> None:
    done = env.vhdtool("run", *[a.replace("{disk}", str(disk)) for a in args], cwd=env.tmp)
    assert_clean_error(done, 64)
    assert message in done.stderr, done.stderr
    env.assert_nothing_left()


def test_an_image_without_a_bootloader_needs_kernel(env: Env, guest: Guest) -> None:
    image = build_root_image(env, "gpt-less", "echo hi")  # a filesystem, no MBR boot code
    done = env.vhdtool("run", image)
    assert_clean_error(done, 64)
    assert "no boot sector" in done.stderr or "no bootloader" in done.stderr
    assert "give --kernel" in done.stderr
    env.assert_nothing_left()


def test_qemu_missing(env: Env, disk: Path, guest: Guest) -> None:
    done = env.vhdtool(
        "run", disk, "--kernel", guest.kernel, "--snapshot", env={**env.vars, "PATH": str(env.tmp / "nothing")}
    )
    assert_clean_error(done, 1)
    assert "qemu-system-x86_64 not found" in done.stderr and "qemu-system-x86" in done.stderr
    env.assert_nothing_left()


def test_qemu_failing_to_start_is_reported_with_its_own_words(env: Env, disk: Path) -> None:
    not_a_kernel = env.tmp / "vmlinuz"
    not_a_kernel.write_text("not a kernel\n")  # QEMU refuses it while setting up the machine
    done = env.vhdtool("run", disk, "--kernel", not_a_kernel, "--snapshot", timeout=60)
    assert_clean_error(done, 1)
    assert "QEMU failed to start: " in done.stderr
    env.assert_nothing_left()


@pytest.mark.skipif(host.probe().kind is host.HostKvm.KVM, reason="this host has real KVM: --accel kvm is fine here")
def test_accel_kvm_without_real_kvm_fails_at_once_with_the_reason(env: Env, disk: Path, guest: Guest) -> None:
    done = env.vhdtool("run", disk, "--kernel", guest.kernel, "--accel", "kvm")
    assert_clean_error(done, 1)
    assert "--accel kvm: this host cannot run ordinary guests under KVM" in done.stderr
    assert host.probe().reason in done.stderr and "--accel tcg" in done.stderr
    env.assert_nothing_left()
