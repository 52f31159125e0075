"""Reduced precision: which precisions a target runs, calibration data, and quantization."""

from __future__ import annotations

from ..errors import DeploytoolError

PRECISIONS = ("fp32", "fp16", "bf16", "int8")
BF16_FLAG = "avx512_bf16"  # /proc/cpuinfo's name of the vdpbf16ps instructions


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
    if target.target.get("kind") != "llvm":
        raise DeploytoolError(f"--precision {precision} builds for CPU targets, not "
                              f"{target.target.get('kind')} ({target.name})",
                              "Compile this target with --precision fp32")
    if precision == "bf16" and BF16_FLAG not in target.cpu_features():
        raise DeploytoolError(f"--precision bf16 needs AVX-512 BF16, which {target.name} "
                              f"({target.cpu}) does not have",
                              "Compile with --precision int8 or fp32, or for a target with "
                              "AVX-512 BF16 (Intel Cooper Lake, Sapphire Rapids; AMD Zen 4 "
                              "and later)")
    if precision == "fp16" and target.arch != "aarch64":
        # its float32 sums widen each operand: ResNet-18 ran at 0.79x, BERT-medium at 0.84x the
        # speed of their float32 packages on a Zen 5
        raise DeploytoolError(f"--precision fp16 builds for ARM CPUs, and {target.name} is "
                              f"{target.arch}: its widened float16 runs slower than float32",
                              "Compile with --precision bf16 (AVX-512 BF16), int8 or fp32")


def integer_instructions(target) -> str:
    """How the target's int8 products are computed, for the manifest and the log."""
    from ..schedules.dot_products import AMX_INT8, SDOT, VNNI

    if target.arch == "x86_64" and "amx_int8" in target.cpu_features():
        return (f"{AMX_INT8.name} where a product fits its tiles, else {VNNI.name}, for "
                "convolutions and matrix products")
    if target.arch == "x86_64" and "avx512_vnni" in target.cpu_features():
        return f"{VNNI.name} for convolutions and matrix products"
    if target.arch == "aarch64" and "asimddp" in target.cpu_features():
        return f"{SDOT.name} for convolutions and matrix products"
    return ("8-bit values widened to 32 bits, vector multiply-adds (this target has no "
            "dot-product kernels yet)")


def half_instructions(precision: str, target) -> str:
    """How the target's bf16 or fp16 products are computed, for the manifest and the log."""
    from ..schedules.dot_products import AMX_BF16, BF16

    if precision == "bf16":
        amx = "amx_bf16" in target.cpu_features()
        return (f"{AMX_BF16.name} where a product fits its tiles, else {BF16.name}" if amx
                else f"{BF16.name}") + " for convolutions and matrix products"
    return ("float16 operands widened to float32 (fcvtl), float32 multiply-adds, for "
            "convolutions and matrix products")
