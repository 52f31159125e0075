"""Runners: how to start a package's native binaries for an architecture on this machine."""

from __future__ import annotations

import platform

from .errors import DeploytoolError


def runner_command(arch: str) -> tuple[list[str], dict[str, str]]:
    """The command prefix and extra environment that run a binary built for ``arch`` here.

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
