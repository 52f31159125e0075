"""Runners: how to start a package's native binaries for an architecture on this machine."""

from __future__ import annotations

import os
import platform
import shutil
from pathlib import Path

from ..errors import DeploytoolError

# arch -> (qemu user-mode emulators to try, the sysroot holding that arch's libc and libstdc++,
#          the Debian package providing that sysroot)
QEMU = {"aarch64": (("qemu-aarch64-static", "qemu-aarch64"), "/usr/aarch64-linux-gnu",
                    "g++-aarch64-linux-gnu")}


def runner_command(arch: str) -> tuple[list[str], dict[str, str]]:
    """The command prefix and extra environment that run a binary built for ``arch`` here.

    Native binaries run as they are; aarch64 binaries on another machine run under qemu
    user-mode emulation, with ``QEMU_LD_PREFIX`` pointing at the cross toolchain's sysroot
    (its dynamic loader, libc and libstdc++). ``QEMU_LD_PREFIX`` set in the environment wins.

    Parameters
    ----------
    arch : str
        The package's architecture (``manifest["runtime"]["arch"]``).

    Returns
    -------
    (list of str, dict)
        Prefix to put before the binary (empty when native) and environment variables to add.
    """
    if arch == platform.machine():
        return [], {}
    if arch in QEMU:
        emulators, sysroot, sysroot_package = QEMU[arch]
        emulator = next((e for e in emulators if shutil.which(e)), None)
        if emulator is None:
            raise DeploytoolError(f"running {arch} binaries on this {platform.machine()} machine "
                                  f"needs {emulators[0]}, which is not installed",
                                  "Install it (apt-get install qemu-user-static)")
        sysroot = os.environ.get("QEMU_LD_PREFIX", sysroot)
        if not (Path(sysroot) / "lib").is_dir():
            raise DeploytoolError(f"the {arch} libraries qemu needs are not in {sysroot}",
                                  f"Install them (apt-get install {sysroot_package}) or set "
                                  "QEMU_LD_PREFIX to an aarch64 sysroot")
        return [emulator], {"QEMU_LD_PREFIX": sysroot}
    raise DeploytoolError(f"this {platform.machine()} machine cannot run {arch} binaries",
                          "Run the package on a matching machine")


def can_run(arch: str) -> bool:
    """Whether :func:`runner_command` has a way to run ``arch`` binaries here."""
    try:
        runner_command(arch)
    except DeploytoolError:
        return False
    return True


def can_run_target(target) -> bool:
    """Whether this machine can run code built for ``target`` (a TargetSpec): natively when the
    architecture matches and the CPU has the features, or through an emulator otherwise."""
    if target.arch == platform.machine():
        return target.runs_here()
    return can_run(target.arch)
