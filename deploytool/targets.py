"""Targets as data: the JSON files in targets/, resolved into TargetSpec objects."""

from __future__ import annotations

import difflib
import json
import os
import platform
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from .errors import DeploytoolError

TARGETS_DIR = Path(__file__).resolve().parent.parent / "targets"

# LLVM feature name -> /proc/cpuinfo flag, for the instruction sets a kernel may depend on.
X86_FLAGS = {
    "sse4.1": "sse4_1", "sse4.2": "sse4_2", "avx": "avx", "avx2": "avx2", "fma": "fma",
    "f16c": "f16c", "bmi": "bmi1", "bmi2": "bmi2", "avx512f": "avx512f", "avx512cd": "avx512cd",
    "avx512bw": "avx512bw", "avx512dq": "avx512dq", "avx512vl": "avx512vl",
    "avx512vnni": "avx512_vnni", "avx512bf16": "avx512_bf16", "avx512fp16": "avx512_fp16",
    "avxvnni": "avx_vnni", "sse4a": "sse4a", "fma4": "fma4", "xop": "xop",
    "amx-tile": "amx_tile", "amx-bf16": "amx_bf16", "amx-int8": "amx_int8",
}
ARM_FLAGS = {
    "neon": "asimd", "dotprod": "asimddp", "fullfp16": "fphp",
    "i8mm": "i8mm", "sve": "sve", "bf16": "bf16",
    # only what generated kernels may use (not aes/sha2/crc: a Raspberry Pi 4 lacks them)
    "fp-armv8": "fp", "rdm": "asimdrdm", "fp16fml": "asimdfhm", "sve2": "sve2",
}
CPU_FLAGS = {**X86_FLAGS, **ARM_FLAGS}


@dataclass(frozen=True)
class TargetSpec:
    """A compilation target: the TVM target dict plus how to build and run for it."""

    name: str
    target: dict
    arch: str
    cxx: str = "g++"
    description: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def cpu(self) -> str | None:
        return self.target.get("mcpu")

    @property
    def device(self) -> str:
        """Where the model runs: ``"cuda"`` for a GPU target, else ``"cpu"``."""
        return "cuda" if self.target.get("kind") == "cuda" else "cpu"

    def resolved(self) -> TargetSpec:
        """Replace ``mcpu: native`` by this machine's CPU name (``arch: native``: its GPU's)."""
        if self.device == "cuda" and self.target.get("arch") == "native":
            from .toolchains.cuda import detect_gpu_arch

            return replace(self, target={**self.target, "arch": detect_gpu_arch()})
        if self.cpu != "native":
            return self
        import tvm

        cpu = tvm.target.codegen.llvm_get_system_cpu()
        named = {**self.target, "mcpu": cpu}
        extra = _features_beyond(named)
        if extra:
            named["mattr"] = [*named.get("mattr", []), *extra]
        return replace(self, target=named)

    def tvm_target(self):
        """The ``tvm.target.Target``; raises DeploytoolError if TVM rejects the dict."""
        import tvm

        try:
            return tvm.target.Target(self.target)
        except Exception as err:  # TVM raises several error types for a bad dict
            raise DeploytoolError(
                f"target '{self.name}' is not a valid TVM target ({str(err).splitlines()[-1]})",
                "Fix its \"target\" dict",
            ) from err

    def cpu_features(self) -> list[str]:
        """The /proc/cpuinfo flags a machine needs to run code built for this target."""
        import tvm

        # a GPU target's host code runs on the CPU too: its "host" dict says for which
        host = self.resolved().target if self.target.get("kind") == "llvm" else \
            self.target.get("host")
        if not isinstance(host, dict) or host.get("kind") != "llvm":
            return []
        features = tvm.target.codegen.llvm_get_cpu_features(tvm.target.Target(host))
        return sorted(CPU_FLAGS[f] for f in features if f in CPU_FLAGS)

    def runs_here(self) -> bool:
        """Whether this machine can run code built for this target."""
        if self.arch != platform.machine():
            return False
        if self.device == "cuda":
            from .toolchains.cuda import gpu_present

            if not gpu_present():
                return False
        return set(self.cpu_features()) <= machine_cpu_flags()

    def to_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "target": self.target,
                "arch": self.arch, "cxx": self.cxx, **self.extra}


AMX_FEATURES = ("amx-tile", "amx-bf16", "amx-int8")


def _features_beyond(target: dict) -> list[str]:
    """``+feature`` for each instruction set this machine's /proc/cpuinfo lists that LLVM's model
    of the named CPU lacks: a virtual machine's CPU model can name an older CPU than its flags
    (a Xeon with AMX that LLVM calls ``rocketlake``, without AVX-512 BF16). ``-amx-...`` where
    Linux does not grant this process AMX (kernels before 5.16 list the flags but fault on the
    first tile instruction)."""
    import tvm

    flags = machine_cpu_flags()
    known = X86_FLAGS if platform.machine() == "x86_64" else ARM_FLAGS
    has = tvm.target.codegen.llvm_get_cpu_features(tvm.target.Target(target))
    granted = amx_granted(flags)
    return ([f"+{f}" for f, flag in known.items()
             if flag in flags and f not in has and (granted or f not in AMX_FEATURES)]
            + [f"-{f}" for f in AMX_FEATURES if f in has and not granted])


def amx_granted(flags: set[str]) -> bool:
    """Whether Linux grants this process AMX's tile state (``arch_prctl(ARCH_REQ_XCOMP_PERM,
    XFEATURE_XTILEDATA)``, Linux 5.16 and later), on a CPU whose /proc/cpuinfo ``flags`` have
    AMX; what an AMX package's runtime asks for too."""
    import ctypes

    if platform.machine() != "x86_64" or "amx_tile" not in flags:
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.syscall(158, 0x1023, 18) == 0  # SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XTILEDATA


def machine_cpu_flags() -> set[str]:
    """This machine's CPU flags as /proc/cpuinfo lists them."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def list_targets() -> list[TargetSpec]:
    """Every target in targets/, sorted by name."""
    return [_from_file(path) for path in sorted(TARGETS_DIR.glob("*.json"))]


def load_target(spec: str) -> TargetSpec:
    """Resolve ``--target``: a name in targets/, a path to a JSON file, or inline JSON.

    Parameters
    ----------
    spec : str
        The value given to ``--target``.

    Returns
    -------
    TargetSpec
    """
    if spec.lstrip().startswith("{"):
        return _from_dict(_parse(spec, "inline target"), "inline")
    path = Path(spec)
    if path.suffix == ".json" or "/" in spec:
        if not path.is_file():
            raise DeploytoolError(f"target file {spec} not found", "Check the path")
        return _from_file(path)
    named = TARGETS_DIR / f"{spec}.json"
    if not named.is_file():
        names = ", ".join(t.name for t in list_targets())
        raise DeploytoolError(f"unknown target '{spec}'",
                              f"Use one of {names}, a path to a JSON file, or inline JSON")
    return _from_file(named)


def _parse(text: str, what: str) -> dict:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DeploytoolError(f"{what} is not valid JSON ({err})", "Fix the JSON") from err
    if not isinstance(data, dict):
        raise DeploytoolError(f"{what} is not a JSON object", 'Write {"target": {...}, ...}')
    return data


def _from_file(path: Path) -> TargetSpec:
    return _from_dict(_parse(path.read_text(), f"target file {path}"), path.stem)


MAX_CORES = 1024  # num-cores of a target: the tuner starts a worker per core


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Send what C++ code writes to file descriptor 2 to /dev/null for the block (LLVM warns
    there about each feature it does not know)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _llvm(attrs: dict):
    import tvm

    return tvm.target.Target({"kind": "llvm", **attrs})


def check_llvm_target(target: dict, name: str) -> None:
    """Check an llvm target dict's ``mcpu`` and ``mattr`` against the CPUs and features TVM's
    LLVM knows for its triple; raise a DeploytoolError naming the valid choices. (TVM itself
    only warns, and builds for a generic CPU.)"""
    from tvm.target import _ffi_api, codegen

    triple = target.get("mtriple") or codegen.llvm_get_system_triple()
    if not isinstance(triple, str):
        raise DeploytoolError(f"target '{name}' has an mtriple that is not a string",
                              'Write e.g. "mtriple": "aarch64-linux-gnu"')
    cpu = target.get("mcpu")
    if cpu is not None and cpu != "native":
        if not isinstance(cpu, str):
            raise DeploytoolError(f"target '{name}' has an mcpu that is not a string",
                                  'Write e.g. "mcpu": "cortex-a72"')
        if not codegen.llvm_is_valid_cpu(cpu, triple):
            cpus = sorted(codegen.llvm_get_cpu_archlist(_llvm({"mtriple": triple})))
            if cpus:  # else this LLVM has no such backend: the build says so
                close = difflib.get_close_matches(cpu, cpus, n=3)
                raise DeploytoolError(
                    f"target '{name}' has mcpu '{cpu}', which LLVM does not know for {triple}"
                    + (f" (did you mean {', '.join(close)}?)" if close else ""),
                    f"Use native or one of {', '.join(cpus)}")
    mattr = target.get("mattr")
    if mattr is None:
        return
    if not (isinstance(mattr, list) and all(isinstance(a, str) for a in mattr)):
        raise DeploytoolError(f"target '{name}' has an mattr that is not a list of strings",
                              'Write e.g. "mattr": ["+neon"]')
    for attr in mattr:
        feature = attr[1:]
        if attr[:1] not in ("+", "-") or not feature:
            raise DeploytoolError(f"target '{name}' has mattr entry '{attr}', which is not "
                                  "+FEATURE or -FEATURE", 'Write e.g. "mattr": ["+neon"]')
        with _quiet_stderr():
            known = feature in _ffi_api.llvm_get_cpu_features(
                _llvm({"mtriple": triple, "mattr": [f"+{feature}"]}))
        if not known:
            features = _cpu_features_of(triple)
            close = difflib.get_close_matches(feature, features, n=3)
            raise DeploytoolError(
                f"target '{name}' has mattr '{attr}', a feature LLVM does not know for {triple}"
                + (f" (did you mean {', '.join(close)}?)" if close else ""),
                f"Use features such as {', '.join(features)}")


def _cpu_features_of(triple: str) -> list[str]:
    """Every feature some CPU of ``triple`` has: the names LLVM knows, save the rarest."""
    from tvm.target import _ffi_api, codegen

    found: set[str] = set()
    for cpu in codegen.llvm_get_cpu_archlist(_llvm({"mtriple": triple})):
        found |= set(_ffi_api.llvm_get_cpu_features(_llvm({"mtriple": triple, "mcpu": cpu})))
    return sorted(found)


def _from_dict(data: dict, name: str) -> TargetSpec:
    target = data.get("target")
    if not isinstance(target, dict) or "kind" not in target:
        raise DeploytoolError(f"target '{name}' has no \"target\" dict with a \"kind\"",
                              'Add "target": {"kind": "llvm", "mtriple": ..., "mcpu": ...}')
    for key in ("arch", "cxx", "description", "name"):
        if key in data and not isinstance(data[key], str):
            raise DeploytoolError(f"target '{name}' has a \"{key}\" that is not a string",
                                  f'Write "{key}": "..."')
    cores = target.get("num-cores")
    if cores is not None and not (isinstance(cores, int) and 1 <= cores <= MAX_CORES):
        raise DeploytoolError(f"target '{name}' has num-cores {json.dumps(cores)}",
                              f"Give a whole number from 1 to {MAX_CORES}, or leave it out")
    for llvm in (target, target.get("host")):
        if isinstance(llvm, dict) and llvm.get("kind") == "llvm":
            check_llvm_target(llvm, name)
    known = {"target", "arch", "cxx", "description", "name"}
    host = target.get("host") if isinstance(target.get("host"), dict) else {}  # a GPU's CPU
    triple = target.get("mtriple", host.get("mtriple", "x86_64"))
    arch = data.get("arch") or str(triple).split("-")[0]
    spec = TargetSpec(name=data.get("name", name), target=target, arch=arch,
                      cxx=data.get("cxx", "g++"), description=data.get("description", ""),
                      extra={k: v for k, v in data.items() if k not in known})
    if spec.cpu != "native" and target.get("arch") != "native":
        spec.tvm_target()
    return spec
