"""Build the package's native parts (C API library, runner) with the target's C++ compiler."""

from __future__ import annotations

import hashlib
import os
import platform
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..common import cache_root
from ..errors import DeploytoolError
from ..targets import TargetSpec
from . import tvm_runtime
from .cuda import runtime_libraries as device_runtime_libraries

RUNTIME_SRC = Path(__file__).resolve().parent.parent / "runtime"
HEADERS = ("deploytool.h", "deploytool.hpp", "npy.hpp", "sha256.hpp")
BOOST_MIN_VERSION = 107000  # Boost.Beast's tcp_stream: Boost 1.70
BOOST_FOLDERS = ("/usr/include", "/usr/local/include")


def check_compiler(cxx: str) -> None:
    """Raise a clear error when the C++ compiler a target needs is not installed."""
    if shutil.which(cxx) is None:
        package = "g++-aarch64-linux-gnu" if "aarch64" in cxx else "g++"
        raise DeploytoolError(f"the C++ compiler {cxx} is not installed",
                              f"Install it (apt-get install {package})")


def tvm_runtime_libraries(target: TargetSpec, runtime_dir: Path | None = None,
                          log=None) -> list[Path]:
    """``libtvm_runtime.so`` and ``libtvm_ffi.so`` for the target's architecture.

    From ``runtime_dir`` when given, else the installed wheels for this machine's architecture,
    else (aarch64) the pinned aarch64 wheels, fetched once into the cache.
    """
    import tvm
    import tvm_ffi

    if runtime_dir is not None:
        return tvm_runtime.libraries_in_dir(Path(runtime_dir), target.arch)
    if target.arch != platform.machine():
        return tvm_runtime.cached_runtime(target.arch, log)
    return [Path(tvm.__file__).parent / "lib" / "libtvm_runtime.so",
            Path(tvm_ffi.__file__).parent / "lib" / "libtvm_ffi.so"]


def ffi_include_dir() -> Path:
    import tvm_ffi

    return Path(tvm_ffi.__file__).parent / "include"


def boost_headers() -> tuple[Path | None, str]:
    """A folder whose only entry is ``boost``, a link to the installed Boost headers (so that a
    cross compiler finds Boost without this machine's other headers), or None and the reason.

    Boost.Beast and Boost.Asio are header-only: the server needs them to compile, not to run.
    ``DEPLOYTOOL_BOOST_INCLUDE`` names another folder holding ``boost/``.
    """
    folders = [os.environ.get("DEPLOYTOOL_BOOST_INCLUDE", ""), *BOOST_FOLDERS]
    for folder in filter(None, folders):
        boost = Path(folder) / "boost"
        if not (boost / "beast" / "http.hpp").is_file() or not (boost / "version.hpp").is_file():
            continue
        version = re.search(r"#define BOOST_VERSION (\d+)", (boost / "version.hpp").read_text())
        if version is None or int(version.group(1)) < BOOST_MIN_VERSION:
            found = int(version.group(1)) if version else 0
            return None, (f"Boost {found // 100000}.{found // 100 % 1000} in {folder} is older "
                          "than 1.70")
        link_dir = cache_root() / "boost-include" / hashlib.sha256(
            str(boost.resolve()).encode()).hexdigest()[:12]
        link = link_dir / "boost"
        if not link.is_symlink():
            link_dir.mkdir(parents=True, exist_ok=True)
            scratch = link_dir / f"boost.tmp{os.getpid()}"
            scratch.unlink(missing_ok=True)
            scratch.symlink_to(boost.resolve(), target_is_directory=True)
            os.replace(scratch, link)
        return link_dir, ""
    return None, "Boost (libboost-dev) is not installed"


def compile_cached(target: TargetSpec, args: list[str], output: Path, sources: list[Path]) -> None:
    """Run the compiler, reusing a cached result for identical sources, flags and compiler."""
    package_dir = str(output.parent.parent)
    digest = hashlib.sha256(" ".join([target.cxx, *args]).replace(package_dir, "").encode())
    for source in sources:
        digest.update(source.read_bytes())
    cached = cache_root() / "native" / digest.hexdigest()[:24] / output.name
    if not cached.is_file():
        cached.parent.mkdir(parents=True, exist_ok=True)
        scratch = cached.with_suffix(f".tmp{os.getpid()}")
        proc = subprocess.run([target.cxx, *args, "-o", str(scratch)], capture_output=True,
                              text=True)
        if proc.returncode != 0:
            raise DeploytoolError(f"{target.cxx} failed to build {output.name}: "
                                  f"{proc.stderr.strip()[-2000:]}",
                                  "Check the compiler installation")
        os.replace(scratch, cached)
    shutil.copy2(cached, output)




def build_native(target: TargetSpec, package_dir: Path,
                 runtime_libraries: list[Path] | None = None, log=None) -> None:
    """Write ``lib/`` (TVM runtime, C API), ``include/``, ``bin/deploytool-run`` and, where Boost
    is installed, ``bin/deploytool-serve`` (else ``log`` says, in one line, that it is left out)."""
    check_compiler(target.cxx)
    lib, include, bin_dir = (package_dir / d for d in ("lib", "include", "bin"))
    for folder in (lib, include, bin_dir):
        folder.mkdir(parents=True, exist_ok=True)
    for library in runtime_libraries or tvm_runtime_libraries(target):
        shutil.copy2(library, lib / library.name)
    for library in device_runtime_libraries(target):  # CUDA: libtvm_runtime_cuda, libcudart
        shutil.copy2(library, lib / library.name)
    for header in HEADERS:
        shutil.copy2(RUNTIME_SRC / header, include / header)
    shutil.copy2(RUNTIME_SRC / "deploytool_dlpack.h", include / "deploytool_dlpack.h")
    (include / "dlpack").mkdir(exist_ok=True)
    shutil.copy2(ffi_include_dir() / "dlpack" / "dlpack.h", include / "dlpack" / "dlpack.h")
    api_source = RUNTIME_SRC / "deploytool.cc"
    compile_cached(target, ["-std=c++17", "-O2", "-fPIC", "-shared", str(api_source),
                      f"-I{include}", f"-I{ffi_include_dir()}", f"-L{lib}", "-ltvm_ffi",
                      "-ltvm_runtime", "-Wl,-rpath,$ORIGIN"],
             lib / "libdeploytool.so", [api_source, *(RUNTIME_SRC / h for h in HEADERS),
                                        RUNTIME_SRC / "deploytool_dlpack.h"])
    write_build_files(package_dir)
    runner = RUNTIME_SRC / "runner.cc"
    with ThreadPoolExecutor(1) as pool:  # the server (the longer compile) beside the runner
        server = pool.submit(build_server, target, package_dir, log)
        compile_cached(target, ["-std=c++17", "-O2", str(runner), f"-I{include}", f"-L{lib}",
                          "-ldeploytool", "-Wl,-rpath,$ORIGIN/../lib", f"-Wl,-rpath-link,{lib}"],
                 bin_dir / "deploytool-run", [runner, *(RUNTIME_SRC / h for h in HEADERS)])
        server.result()


def build_server(target: TargetSpec, package_dir: Path, log=None) -> bool:
    """``bin/deploytool-serve``, the KServe v2 HTTP server (Boost.Beast, header-only), linked to
    the package's ``lib/``. Without Boost, logs one line and returns False."""
    boost, reason = boost_headers()
    if boost is None:
        (log or (lambda _line: None))(
            f"  note: {reason}: the package has no bin/deploytool-serve "
            "(apt-get install libboost-dev, then compile again)")
        return False
    lib, include = package_dir / "lib", package_dir / "include"
    source = RUNTIME_SRC / "server.cc"
    compile_cached(target, ["-std=c++17", "-O2", "-pthread", str(source), f"-I{include}",
                            f"-I{ffi_include_dir()}", "-isystem", str(boost), f"-L{lib}",
                            "-ldeploytool", "-ltvm_ffi", "-Wl,-rpath,$ORIGIN/../lib",
                            f"-Wl,-rpath-link,{lib}"],
                   package_dir / "bin" / "deploytool-serve",
                   [source, *(RUNTIME_SRC / h for h in HEADERS)])
    return True


CMAKE_CONFIG = """\
# find_package(deploytool REQUIRED PATHS <package>), then
# target_link_libraries(app PRIVATE deploytool::deploytool): headers, the library and an RPATH
# to this package's lib/. The package may be moved: every path is relative to this file.
get_filename_component(deploytool_PACKAGE_DIR "${CMAKE_CURRENT_LIST_DIR}/../../.." ABSOLUTE)
set(_deploytool_lib "${deploytool_PACKAGE_DIR}/lib")
if(NOT TARGET deploytool::deploytool)
  add_library(deploytool::deploytool SHARED IMPORTED)
  set_target_properties(deploytool::deploytool PROPERTIES
    IMPORTED_LOCATION "${_deploytool_lib}/libdeploytool.so"
    IMPORTED_NO_SONAME TRUE
    INTERFACE_INCLUDE_DIRECTORIES "${deploytool_PACKAGE_DIR}/include"
    INTERFACE_LINK_DIRECTORIES "${_deploytool_lib}"
    INTERFACE_LINK_OPTIONS "-Wl,-rpath,${_deploytool_lib};-Wl,-rpath-link,${_deploytool_lib}")
endif()
set(deploytool_FOUND TRUE)
"""

PKG_CONFIG = """\
# pkg-config --cflags --libs deploytool, with PKG_CONFIG_PATH=<package>/lib/pkgconfig
prefix=${pcfiledir}/../..
libdir=${prefix}/lib
includedir=${prefix}/include

Name: deploytool
Description: a deploytool package: the C API (deploytool.h) and C++ wrapper (deploytool.hpp)
Version: %s
Libs: -L${libdir} -ldeploytool -Wl,-rpath,${libdir} -Wl,-rpath-link,${libdir}
Cflags: -I${includedir}
"""


def write_build_files(package_dir: Path) -> None:
    """``lib/cmake/deploytool/deploytoolConfig.cmake`` and ``lib/pkgconfig/deploytool.pc``, so
    that CMake and Makefile projects link the package with find_package or pkg-config."""
    from .. import __version__

    cmake = package_dir / "lib" / "cmake" / "deploytool"
    cmake.mkdir(parents=True, exist_ok=True)
    (cmake / "deploytoolConfig.cmake").write_text(CMAKE_CONFIG)
    (cmake / "deploytoolConfigVersion.cmake").write_text(
        f'set(PACKAGE_VERSION "{__version__}")\nset(PACKAGE_VERSION_COMPATIBLE TRUE)\n'
        'if(PACKAGE_FIND_VERSION STREQUAL PACKAGE_VERSION)\n'
        '  set(PACKAGE_VERSION_EXACT TRUE)\nendif()\n')
    pkgconfig = package_dir / "lib" / "pkgconfig"
    pkgconfig.mkdir(parents=True, exist_ok=True)
    (pkgconfig / "deploytool.pc").write_text(PKG_CONFIG % __version__)

