"""``compile --dump-ir DIR``: what the compiler made of the model at each step, as text.

DIR receives

- ``relax-imported.py``: the Relax module right after import (TVMScript),
- ``relax-final.py``: the module after the build's Relax pipeline (fused, scheduled, lowered to
  VM builtins),
- ``tir/<kernel>.py``: each kernel (PrimFunc) as scheduled, before TIR lowering,
- ``vm.txt``: the VM bytecode of the model's functions,
- the generated code: ``model.s`` and ``model.ll`` (the LLVM module's assembly and IR; the host
  code of a CUDA build) and ``model.cu`` (a CUDA build's kernels).

The dump only reads what the build makes; the library built is the same with or without it.
"""

from __future__ import annotations

from pathlib import Path

IMPORTED = "relax-imported.py"
FINAL = "relax-final.py"
KERNELS = "tir"
BYTECODE = "vm.txt"
# runtime module kind -> (inspect_source format, file name) of its generated code; a CUDA
# module gives its CUDA source for "" (its own format is the fatbin nvcc made)
SOURCES = {"llvm": [("asm", "model.s"), ("ll", "model.ll")], "cuda": [("", "model.cu")]}
ALL_FILES = [IMPORTED, FINAL, BYTECODE, *(name for pairs in SOURCES.values() for _, name in pairs)]


def start_dump(folder: Path, imported) -> None:
    """Create ``folder``, clear a previous dump's files from it, write the imported module."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ALL_FILES:
        (folder / name).unlink(missing_ok=True)
    for kernel in (folder / KERNELS).glob("*.py"):
        kernel.unlink()
    (folder / IMPORTED).write_text(imported.script())


def dumping_pipeline(pipeline, tvm_target, folder: Path):
    """The Relax pipeline ``pipeline`` (a Pass or a TVM pipeline name), writing the module it
    returns to ``relax-final.py`` and its kernels to ``tir/``."""
    import tvm

    pipeline = _resolve(pipeline, tvm_target)

    @tvm.transform.module_pass(opt_level=0, name="DeploytoolDumpIR")
    def dumped(mod, _ctx):
        mod = pipeline(mod)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / FINAL).write_text(mod.script())
        _write_kernels(mod, folder / KERNELS)
        return mod

    return dumped


def dump_code(executable, folder: Path) -> None:
    """Write the VM bytecode and the generated code of every module of ``executable``."""
    (folder / BYTECODE).write_text(executable.as_text())
    sources: dict[str, list[str]] = {}
    for module in _modules(executable.mod):
        for fmt, name in SOURCES.get(module.kind, []):
            source = _source(module, fmt)
            if source:
                sources.setdefault(name, []).append(source)
    for name, texts in sources.items():
        (folder / name).write_text("\n".join(texts))


def dump_summary(folder: Path) -> str:
    """One line: where the dump is and what it holds."""
    kernels = len(list((folder / KERNELS).glob("*.py")))
    names = [n for n in ALL_FILES if (folder / n).is_file()]
    return f"  IR dumped to {folder}: {', '.join(names)}, {KERNELS}/ ({kernels} kernels)"


def _resolve(pipeline, tvm_target):
    """A pipeline name as tvm.compile resolves it (a GPU target's "default" is its own)."""
    from tvm import relax

    if not isinstance(pipeline, str):
        return pipeline
    if pipeline == "default" and "gpu" in tvm_target.keys:
        try:
            return relax.get_default_pipeline(tvm_target)
        except (ValueError, AttributeError):
            pass
    return relax.get_pipeline(pipeline)


def _write_kernels(mod, folder: Path) -> None:
    import tvm

    folder.mkdir(exist_ok=True)
    for gv, func in mod.functions_items():
        if isinstance(func, tvm.tirx.PrimFunc):
            (folder / f"{_file_name(gv.name_hint)}.py").write_text(func.script())


def _modules(module):
    """``module`` and every module it imports, depth first."""
    yield module
    for imported in module.imports:
        yield from _modules(imported)


def _source(module, fmt: str) -> str:
    try:
        return module.inspect_source(fmt)
    except Exception:  # a format this module cannot give: left out of the dump
        return ""


MAX_NAME = 200  # characters of a kernel's file name; most file systems allow 255 bytes


def _file_name(name: str) -> str:
    """A kernel's name as a file name; a long one (a fused int8 kernel's names every operator it
    holds) loses its middle, replaced by a digest of the whole name to keep it unique (the end
    tells a kernel from its weight_prepack)."""
    import hashlib

    safe = "".join(c if c.isalnum() or c in "_-." else "_" for c in name)
    if len(safe) <= MAX_NAME:
        return safe
    digest = hashlib.sha256(name.encode()).hexdigest()[:16]
    return f"{safe[:MAX_NAME // 2]}_{digest}_{safe[-(MAX_NAME // 2 - 18):]}"
