"""Run a package from Python with numpy only: no TVM, torch or ONNX in the process.

    import deploytool.runtime as dt
    model = dt.load("artifacts/mlp")
    outputs = model.run({"x": x})        # {"output": numpy array}

The module loads the package's own ``lib/libdeploytool.so`` (its C API) with ctypes. This folder
also holds the C, C++ and Java sources compiled into every package.
"""

from .binding import Model, PackageError, TensorInfo, load, verify

__all__ = ["Model", "PackageError", "TensorInfo", "load", "verify"]
