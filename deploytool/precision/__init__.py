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
    features = set(target.cpu_features())
    if target.arch == "x86_64":
        if "avx512_vnni" in features or "avx_vnni" in features:
            return "vpdpbusd (AVX-512 VNNI)" if "avx512_vnni" in features else "vpdpbusd (AVX-VNNI)"
        return "8-bit multiplies widened to 16 and 32 bits (no VNNI on this target)"
    if "asimddp" in features:
        return "sdot/udot (ARMv8.2 dot product)"
    return "NEON 8-bit multiplies widened to 16 and 32 bits (no dot product on this target)"
