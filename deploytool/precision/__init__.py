"""Reduced precision: which precisions a target runs, calibration data, and quantization."""

from __future__ import annotations

from ..errors import DeploytoolError

PRECISIONS = ("fp32", "fp16", "bf16", "int8")


def check_precision(precision: str, target) -> None:
    """Raise DeploytoolError where ``target`` cannot run ``precision`` (or deploytool cannot
    yet build it there).

    Parameters
    ----------
    precision : str
        One of PRECISIONS.
    target : TargetSpec
    """
    if precision not in PRECISIONS:
        raise DeploytoolError(f"unknown precision '{precision}'",
                              f"Pass one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return
    if precision in ("fp16", "bf16"):
        raise DeploytoolError(f"--precision {precision} is not built yet",
                              "Compile with --precision int8 or fp32")
    if target.target.get("kind") != "llvm":
        raise DeploytoolError(f"--precision int8 builds for CPU targets, not "
                              f"{target.target.get('kind')} ({target.name})",
                              "Compile this target with --precision fp32")


def integer_instructions(target) -> str:
    """How the target's int8 products are computed, for the manifest and the log."""
    if target.arch == "x86_64" and "avx512_vnni" in target.cpu_features():
        return "vpdpbusd (AVX-512 VNNI) for convolutions and matrix products"
    return ("8-bit values widened to 32 bits, vector multiply-adds (this target has no "
            "dot-product kernels yet)")
