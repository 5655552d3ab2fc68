"""Drive a Python calibrator through TensorRT's REAL Python bindings on a machine without a GPU.

TensorRT's pybind11 module (``tensorrt.so``, in the ``tensorrt[-cu12]-bindings`` wheels on PyPI)
loads once stand-ins for ``libnvinfer`` & co. exist (``stubs.c``). Its calibrator classes are
pybind11 trampolines of header-only C++ interfaces, so a C++ driver (``driver.cpp``), compiled
against TensorRT's public headers (vendored in ``include/``, Apache-2.0), can call a Python
calibrator's ``getBatchSize / getBatch / readCalibrationCache / writeCalibrationCache /
getAlgorithm`` exactly as the builder does, trampolines included (see
``/work/shared/docs/trt-real-bindings.md`` in the project notes and ``README.md`` here).

Two sides:

- the parent (pytest, the GPU smoke script): :func:`prepare` installs a version's bindings with
  ``pip install --no-deps --target`` and builds the stubs and the driver, all in a cache
  folder reused between runs (``$TRTKLD_TEST_CACHE``, default ``~/.cache/trtkld-test``);
  :func:`subprocess_env` is the environment of a child process that uses them. Anything
  missing (gcc, CUDA's ``cuda_runtime_api.h``, the network for pip) raises
  :class:`Unavailable` with the reason, for a skip - never a fake pass.
- the child (one Python process per TensorRT version, as each wheel is ``tensorrt``):
  :func:`activate` imports the bindings as ``tensorrt``; :class:`Driver` calls the virtuals.

Standard library only: the GPU smoke script uses it on machines with nothing else installed.
"""
from __future__ import annotations

import ctypes
import hashlib
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent

# TensorRT version -> pip requirement of its bindings wheel.
WHEELS = {
    "8.6.1": "tensorrt-bindings==8.6.1",
    "10.0.1": "tensorrt-cu12-bindings==10.0.1",
    "10.16.1.11": "tensorrt-cu12-bindings==10.16.1.11",
    "11.4.0.106": "tensorrt-cu12-bindings==11.4.0.106",
}
VERSIONS = tuple(WHEELS)

# Libraries tensorrt.so links to, per major version (8.x also needs the UFF/Caffe parsers).
STUB_LIBRARIES = {
    8: ("libnvinfer.so.8", "libnvonnxparser.so.8", "libnvinfer_plugin.so.8", "libnvparsers.so.8"),
    10: ("libnvinfer.so.10", "libnvonnxparser.so.10", "libnvinfer_plugin.so.10"),
    11: ("libnvinfer.so.11", "libnvonnxparser.so.11", "libnvinfer_plugin.so.11"),
}
# Header set the driver is compiled against, per major (11.x has no calibrators: no driver).
HEADERS = {8: "tensorrt-8.6.1", 10: "tensorrt-10.16"}

# Calibrator base kinds understood by driver.cpp's as_calibrator().
BASES = {"IInt8EntropyCalibrator2": 1, "IInt8EntropyCalibrator": 2, "IInt8MinMaxCalibrator": 3}

ENV_SITE = "TRTKLD_REALBIND_SITE"
ENV_DRIVER = "TRTKLD_REALBIND_DRIVER"
ENV_VERSION = "TRTKLD_REALBIND_VERSION"


class Unavailable(RuntimeError):
    """The real-bindings setup cannot be had here; ``str()`` is the reason to print."""


def major_of(version: str) -> int:
    return int(version.split(".")[0])


def cache_root() -> Path:
    """Folder for wheels and compiled stubs/drivers, reused between runs."""
    env = os.environ.get("TRTKLD_TEST_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "trtkld-test"


def cuda_include_dir() -> Optional[Path]:
    """A folder holding CUDA's ``cuda_runtime_api.h`` (TensorRT's headers include it)."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    for root in filter(None, candidates):
        inc = Path(root) / "include"
        if (inc / "cuda_runtime_api.h").is_file():
            return inc
    return None


def _digest(*parts: Any) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else str(part).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _publish(tmp: Path, final: Path) -> Path:
    """Move a finished temporary folder into place (another process may have won the race)."""
    try:
        os.replace(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not final.is_dir():
            raise
    return final


def _run(cmd: list[str], what: str, timeout: float = 600) -> None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as exc:
        raise Unavailable(f"{what}: {cmd[0]} not found ({exc})") from exc
    except subprocess.TimeoutExpired as exc:
        raise Unavailable(f"{what}: timed out after {timeout:.0f}s") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-6:]
        raise Unavailable(f"{what} failed (exit {proc.returncode}): " + " | ".join(tail))


def install_bindings(version: str, root: Optional[Path] = None) -> Path:
    """Folder holding the ``tensorrt_bindings`` package of ``version`` (pip, cached)."""
    root = cache_root() if root is None else root
    requirement = WHEELS[version]
    final = root / "wheels" / f"{version}-py{sys.version_info[0]}{sys.version_info[1]}"
    if (final / "tensorrt_bindings" / "__init__.py").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=".tmp-"))
    _run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
         "--disable-pip-version-check", "--target", str(tmp), requirement],
        f"pip install --no-deps {requirement} for Python "
        f"{sys.version_info[0]}.{sys.version_info[1]} (NVIDIA published wheels for some "
        f"Python versions only; 8.6.1 stops at 3.11)",
    )
    if not (tmp / "tensorrt_bindings" / "__init__.py").is_file():
        shutil.rmtree(tmp, ignore_errors=True)
        raise Unavailable(f"{requirement} installed no tensorrt_bindings package")
    return _publish(tmp, final)


def build_stubs(major: int, root: Optional[Path] = None) -> Path:
    """Folder of stand-in ``libnvinfer.so.N`` & co. for ``LD_LIBRARY_PATH`` (gcc, cached)."""
    root = cache_root() if root is None else root
    source = (HERE / "stubs.c").read_bytes()
    cc = shutil.which(os.environ.get("CC", "gcc"))
    if cc is None:
        raise Unavailable("no C compiler (gcc) on PATH to build the TensorRT library stubs")
    final = root / "stubs" / f"{major}-{_digest(source, cc)}"
    libs = STUB_LIBRARIES[major]
    if all((final / lib).is_file() for lib in libs):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=".tmp-"))
    for lib in libs:
        _run([cc, "-shared", "-fPIC", "-O1", str(HERE / "stubs.c"), f"-Wl,-soname,{lib}",
              "-o", str(tmp / lib)], f"building stub {lib}")
    return _publish(tmp, final)


def build_driver(major: int, root: Optional[Path] = None) -> Path:
    """``driver.cpp`` compiled against the major's TensorRT headers (g++, cached)."""
    root = cache_root() if root is None else root
    if major not in HEADERS:
        raise Unavailable(f"TensorRT {major}.x has no calibrator interfaces to drive")
    cxx = shutil.which(os.environ.get("CXX", "g++"))
    if cxx is None:
        raise Unavailable("no C++ compiler (g++) on PATH to build the calibrator driver")
    cuda_inc = cuda_include_dir()
    if cuda_inc is None:
        raise Unavailable(
            "CUDA's cuda_runtime_api.h (included by TensorRT's headers) was not found under "
            "$CUDA_HOME/include or /usr/local/cuda/include"
        )
    headers = HERE / "include" / HEADERS[major]
    source = (HERE / "driver.cpp").read_bytes()
    header_bytes = b"".join(p.read_bytes() for p in sorted(headers.glob("*.h")))
    final = root / "driver" / f"{major}-{_digest(source, header_bytes, cxx, cuda_inc)}"
    target = final / "driver.so"
    if target.is_file():
        return target
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=".tmp-"))
    _run([cxx, "-std=c++17", "-w", "-shared", "-fPIC", "-O1", f"-I{headers}", f"-I{cuda_inc}",
          str(HERE / "driver.cpp"), "-o", str(tmp / "driver.so")],
         f"compiling driver.cpp against the TensorRT {major}.x headers")
    return _publish(tmp, final) / "driver.so"


@dataclass(frozen=True)
class Setup:
    """Everything a child process needs for one TensorRT version."""

    version: str
    site: Path  # holds tensorrt_bindings/
    stubs: Path  # LD_LIBRARY_PATH
    driver: Optional[Path]  # None for TensorRT 11 (no calibrators)

    @property
    def major(self) -> int:
        return major_of(self.version)


def prepare(version: str, root: Optional[Path] = None) -> Setup:
    """Install/build what ``version`` needs; :class:`Unavailable` with the reason otherwise."""
    major = major_of(version)
    site = install_bindings(version, root)
    stubs = build_stubs(major, root)
    driver = build_driver(major, root) if major in HEADERS else None
    return Setup(version, site, stubs, driver)


def subprocess_env(setup: Setup, base: Optional[dict] = None) -> dict:
    """Environment of a child process that :func:`activate` s ``setup``."""
    env = dict(os.environ if base is None else base)
    ld = env.get("LD_LIBRARY_PATH")
    env["LD_LIBRARY_PATH"] = str(setup.stubs) + (os.pathsep + ld if ld else "")
    env[ENV_SITE] = str(setup.site)
    env[ENV_VERSION] = setup.version
    if setup.driver is not None:
        env[ENV_DRIVER] = str(setup.driver)
    else:
        env.pop(ENV_DRIVER, None)
    return env


# ------------------------------------------------------------------------------ child side


def activate() -> Any:
    """Import the bindings named by the environment as ``tensorrt``; the module.

    Must run before anything imports ``tensorrt``; ``LD_LIBRARY_PATH`` (set by
    :func:`subprocess_env` before the process started) lets ``tensorrt.so`` find the stubs.
    """
    site = os.environ.get(ENV_SITE)
    if not site:
        raise Unavailable(f"{ENV_SITE} is not set: not started through harness.subprocess_env")
    if site not in sys.path:
        sys.path.insert(0, site)
    trt = importlib.import_module("tensorrt_bindings")
    sys.modules["tensorrt"] = trt
    want = os.environ.get(ENV_VERSION)
    if want and trt.__version__ != want:
        raise Unavailable(f"{site} holds TensorRT {trt.__version__}, expected {want}")
    return trt


def instance_pointer(obj: Any) -> int:
    """C++ address of a pybind11 instance: the word after ``PyObject_HEAD`` (simple layout)."""
    return ctypes.c_void_p.from_address(id(obj) + 2 * ctypes.sizeof(ctypes.c_void_p)).value


class Driver:
    """Calls a calibrator's C++ virtuals the way TensorRT's builder does (GIL released)."""

    def __init__(self, path: Optional[str] = None) -> None:
        path = path or os.environ.get(ENV_DRIVER)
        if not path:
            raise Unavailable("no calibrator driver for this TensorRT version")
        lib = ctypes.CDLL(path)
        vp, i32, sz = ctypes.c_void_p, ctypes.c_int32, ctypes.c_size_t
        lib.rb_trt_major.restype = i32
        lib.rb_trt_major.argtypes = []
        lib.rb_get_batch_size.restype = i32
        lib.rb_get_batch_size.argtypes = [vp, i32]
        lib.rb_get_batch.restype = i32
        names = ctypes.POINTER(ctypes.c_char_p)
        lib.rb_get_batch.argtypes = [vp, i32, ctypes.POINTER(vp), names, i32]
        lib.rb_read_calibration_cache.restype = vp
        lib.rb_read_calibration_cache.argtypes = [vp, i32, ctypes.POINTER(sz)]
        lib.rb_write_calibration_cache.restype = None
        lib.rb_write_calibration_cache.argtypes = [vp, i32, vp, sz]
        lib.rb_get_algorithm.restype = i32
        lib.rb_get_algorithm.argtypes = [vp, i32]
        self._lib = lib
        self.header_major = int(lib.rb_trt_major())

    @staticmethod
    def _kind(calibrator: Any) -> int:
        for klass in type(calibrator).__mro__:
            if klass.__name__ in BASES:
                return BASES[klass.__name__]
        raise TypeError(f"{type(calibrator).__name__} derives from none of {sorted(BASES)}")

    def _self(self, calibrator: Any) -> tuple[int, int]:
        return instance_pointer(calibrator), self._kind(calibrator)

    def get_batch_size(self, calibrator: Any) -> int:
        return int(self._lib.rb_get_batch_size(*self._self(calibrator)))

    def get_batch(self, calibrator: Any, names: list[str]) -> Optional[list[int]]:
        """The ``bindings`` TensorRT would read, or None when getBatch returned false."""
        n = len(names)
        bindings = (ctypes.c_void_p * max(n, 1))()
        cnames = (ctypes.c_char_p * max(n, 1))(*[s.encode() for s in names])
        ok = self._lib.rb_get_batch(*self._self(calibrator), bindings, cnames, n)
        return [int(bindings[i] or 0) for i in range(n)] if ok else None

    def read_calibration_cache(self, calibrator: Any) -> Optional[bytes]:
        """The bytes TensorRT would read, or None for a null pointer ("no cache")."""
        length = ctypes.c_size_t(0)
        ptr = self._lib.rb_read_calibration_cache(*self._self(calibrator), ctypes.byref(length))
        return None if not ptr else ctypes.string_at(ptr, length.value)

    def write_calibration_cache(self, calibrator: Any, data: bytes) -> None:
        buf = ctypes.create_string_buffer(data, len(data))
        self._lib.rb_write_calibration_cache(*self._self(calibrator), buf, len(data))

    def get_algorithm(self, calibrator: Any) -> int:
        """``int(nvinfer1::CalibrationAlgoType)`` as the builder gets it."""
        return int(self._lib.rb_get_algorithm(*self._self(calibrator)))
