"""ctypes binding of a package's C API (include/deploytool.h), with numpy arrays in and out."""

from __future__ import annotations

import ctypes
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAX_NDIM = 8
REPORT_BYTES = 1 << 16
ERROR_KINDS = {1: "argument", 2: "package", 3: "platform", 4: "run", 5: "mismatch", 6: "device"}


class PackageError(RuntimeError):
    """A failed C API call, with the C API's message; ``kind`` names its error code."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code, self.kind = code, ERROR_KINDS.get(code, "unknown")


class _Info(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("dtype", ctypes.c_char_p), ("ndim", ctypes.c_int),
                ("shape", ctypes.c_int64 * MAX_NDIM), ("nbytes", ctypes.c_size_t),
                ("max_shape", ctypes.c_int64 * MAX_NDIM)]


@dataclass(frozen=True)
class TensorInfo:
    """An input or output: its name, dtype and shape (-1 for a symbolic dimension, whose upper
    bound is in ``max_shape``, -1 if unbounded)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    max_shape: tuple[int, ...]

    @property
    def is_dynamic(self) -> bool:
        return -1 in self.shape


class _Options(ctypes.Structure):
    _fields_ = [("size", ctypes.c_size_t), ("threads", ctypes.c_int), ("share", ctypes.c_int)]


# The loaded C API by the sha256 of its file. Packages with the same libdeploytool.so share one
# copy: the runtime shares the cores among the models loaded through one copy (dt_load_ex).
_LIBRARIES: dict[str, ctypes.CDLL] = {}


def _library(package: Path) -> ctypes.CDLL:
    path = package / "lib" / "libdeploytool.so"
    if not path.is_file():
        raise PackageError(f"{package} is not a deploytool package (no lib/libdeploytool.so). "
                            "Pass the folder deploytool compile wrote", 2)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest not in _LIBRARIES:
        _LIBRARIES[digest] = _declare(ctypes.CDLL(str(path.resolve())))
    return _LIBRARIES[digest]


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    pointer, size = ctypes.c_void_p, ctypes.c_size_t
    lib.dt_last_error.restype = ctypes.c_char_p
    lib.dt_load_ex.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(_Options),
                               ctypes.POINTER(pointer)]
    lib.dt_free.argtypes = [pointer]
    lib.dt_free.restype = None
    for name in ("dt_num_inputs", "dt_num_outputs"):
        getattr(lib, name).argtypes = [pointer]
    for name in ("dt_input_info", "dt_output_info"):
        getattr(lib, name).argtypes = [pointer, ctypes.c_int, ctypes.POINTER(_Info)]
    lib.dt_run.argtypes = [pointer, ctypes.POINTER(pointer), ctypes.POINTER(pointer)]
    shapes = ctypes.POINTER(ctypes.POINTER(ctypes.c_int64))
    lib.dt_output_shapes.argtypes = [pointer, shapes, shapes]
    lib.dt_run_shaped.argtypes = [pointer, shapes, ctypes.POINTER(pointer),
                                  ctypes.POINTER(pointer)]
    lib.dt_verify.argtypes = [ctypes.c_char_p]
    lib.dt_self_test.argtypes = [pointer, ctypes.c_char_p, size]
    lib.dt_profile.argtypes = [pointer, ctypes.c_int]
    lib.dt_profile_report.argtypes = [pointer, ctypes.c_char_p, size]
    return lib


def _check(lib: ctypes.CDLL, code: int) -> None:
    if code != 0:
        raise PackageError(lib.dt_last_error().decode(errors="replace"), code)


def verify(package: str | Path) -> None:
    """Check the sha256 of model.so and the test vectors against the manifest (dt_verify)."""
    package = Path(package)
    lib = _library(package)
    _check(lib, lib.dt_verify(str(package).encode()))


def load(package: str | Path, device: str | None = None, threads: int = 0) -> Model:
    """Load the package in folder ``package`` onto ``device`` ("cpu", "cuda:0"; None: its own),
    with at most ``threads`` CPU threads a run (0: all the cores; dt_load_ex).

    Raises
    ------
    PackageError
        With the C API's message: not a package, a corrupted one, a CPU or device it cannot run on.
    """
    return Model(Path(package), device, threads)


class Model:
    """A loaded package. Runs take numpy arrays and return new numpy arrays; a model may be
    shared by threads (the C API serialises its runs)."""

    def __init__(self, package: Path, device: str | None = None, threads: int = 0):
        self._lib = _library(package)
        handle = ctypes.c_void_p()
        options = _Options(ctypes.sizeof(_Options), threads, 0)
        _check(self._lib, self._lib.dt_load_ex(str(package).encode(),
                                               device.encode() if device else None,
                                               ctypes.byref(options), ctypes.byref(handle)))
        self._handle = handle
        self.path = package
        self.inputs = self._infos(self._lib.dt_num_inputs, self._lib.dt_input_info)
        self.outputs = self._infos(self._lib.dt_num_outputs, self._lib.dt_output_info)

    def _infos(self, count, info) -> list[TensorInfo]:
        found = []
        for i in range(count(self._handle)):
            raw = _Info()
            _check(self._lib, info(self._handle, i, ctypes.byref(raw)))
            found.append(TensorInfo(raw.name.decode(), raw.dtype.decode(),
                                    tuple(raw.shape[:raw.ndim]), tuple(raw.max_shape[:raw.ndim])))
        return found

    def run(self, inputs: dict[str, np.ndarray] | list[np.ndarray]) -> dict[str, np.ndarray]:
        """Run on ``inputs`` (by name, or in order); returns the outputs by name."""
        arrays = self._arrays(inputs)
        shapes = [np.array(a.shape, dtype=np.int64) for a in arrays]
        out_shapes = self._output_shapes(shapes)
        outputs = [np.empty(s, dtype=o.dtype) for s, o in zip(out_shapes, self.outputs,
                                                               strict=True)]
        _check(self._lib, self._lib.dt_run_shaped(self._handle, _int64_ptrs(shapes),
                                                  _data_ptrs(arrays), _data_ptrs(outputs)))
        return {o.name: a for o, a in zip(self.outputs, outputs, strict=True)}

    def _arrays(self, inputs) -> list[np.ndarray]:
        if isinstance(inputs, dict):
            missing = [i.name for i in self.inputs if i.name not in inputs]
            if missing or len(inputs) != len(self.inputs):
                raise PackageError(f"the model takes inputs {[i.name for i in self.inputs]}, "
                                    f"got {sorted(inputs)}", 1)
            inputs = [inputs[i.name] for i in self.inputs]
        if len(inputs) != len(self.inputs):
            raise PackageError(f"the model takes {len(self.inputs)} inputs, got {len(inputs)}", 1)
        arrays = []
        for info, array in zip(self.inputs, inputs, strict=True):
            array = np.ascontiguousarray(array)
            if str(array.dtype) != info.dtype or array.ndim != len(info.shape):
                raise PackageError(f"input '{info.name}' needs {info.dtype} of shape "
                                    f"{info.shape}, got {array.dtype} {array.shape}", 1)
            arrays.append(array)
        return arrays

    def _output_shapes(self, shapes: list[np.ndarray]) -> list[tuple[int, ...]]:
        out = [np.zeros(len(o.shape), dtype=np.int64) for o in self.outputs]
        _check(self._lib, self._lib.dt_output_shapes(self._handle, _int64_ptrs(shapes),
                                                     _int64_ptrs(out)))
        return [tuple(int(d) for d in s) for s in out]

    def self_test(self) -> tuple[bool, str]:
        """Run the package's own test vectors: (passed, the report)."""
        report = ctypes.create_string_buffer(REPORT_BYTES)
        code = self._lib.dt_self_test(self._handle, report, REPORT_BYTES)
        if code not in (0, 5):
            _check(self._lib, code)
        return code == 0, report.value.decode(errors="replace")

    def profile(self, enable: bool = True) -> None:
        """Time every kernel of the runs that follow (CPU packages), or stop timing."""
        _check(self._lib, self._lib.dt_profile(self._handle, int(enable)))

    def profile_report(self) -> list[tuple[float, int, str]]:
        """(median microseconds, runs timed, kernel name) of each kernel call of a run."""
        report = ctypes.create_string_buffer(REPORT_BYTES * 16)
        _check(self._lib, self._lib.dt_profile_report(self._handle, report, len(report)))
        rows = []
        for line in report.value.decode().splitlines():
            us, runs, name = line.split(maxsplit=2)
            rows.append((float(us), int(runs), name))
        return rows

    def close(self) -> None:
        """Free the model now (also done when it is garbage-collected)."""
        if self._handle:
            self._lib.dt_free(self._handle)
            self._handle = ctypes.c_void_p()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_handle", None):
            self.close()


def _data_ptrs(arrays: list[np.ndarray]):
    return (ctypes.c_void_p * len(arrays))(*[a.ctypes.data for a in arrays])


def _int64_ptrs(arrays: list[np.ndarray]):
    pointer = ctypes.POINTER(ctypes.c_int64)
    return (pointer * len(arrays))(*[a.ctypes.data_as(pointer) for a in arrays])
