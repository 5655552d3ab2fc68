"""A pycuda fake: per-thread context stacks that refuse a push/pop during a TensorRT build.

``install_fake_pycuda(monkeypatch)`` puts ``pycuda``, ``pycuda.driver`` and ``pycuda.compiler``
into ``sys.modules`` and returns the :class:`FakeCuda` behind them. Device memory is host
memory; ``pycuda.compiler.SourceModule`` needs ``nvcc`` on PATH, as the real one does.
"""
from __future__ import annotations

import ctypes
import importlib.machinery
import shutil
import sys
import threading
import types

import numpy as np


class ContextSwitchDuringBuild(AssertionError):
    """A context was pushed or popped while TensorRT was building (it would break the build)."""


class FakeCuda:
    """pycuda.driver's context model: a context stack per thread, host memory as "device".

    ``building()`` marks a TensorRT build on this thread; any push/pop inside it raises
    :class:`ContextSwitchDuringBuild`, as would a context switch under TensorRT's feet.
    """

    def __init__(self) -> None:
        self._tls = threading.local()
        self.pushes = 0
        self.pops = 0
        self.in_build = False
        fake = self

        class Context:
            def __init__(self, label):
                self.label = label

            def push(self):
                fake._switch("push")
                fake.stack.append(self)
                fake.pushes += 1

            @staticmethod
            def pop():
                fake._switch("pop")
                if not fake.stack:
                    raise RuntimeError("cuCtxPopCurrent: context stack empty")
                fake.stack.pop()
                fake.pops += 1

            @staticmethod
            def get_current():
                return fake.stack[-1] if fake.stack else None

            @staticmethod
            def get_device():
                return fake.device

            def __repr__(self):
                return f"<Context {self.label}>"

        class Device:
            @staticmethod
            def count():
                return 1

            def __init__(self, i):
                self.i = i

            def retain_primary_context(self):
                return fake.primary

            def compute_capability(self):
                return (9, 0)

        class Alloc:
            def __init__(self, n):
                self.buf = np.zeros(n, dtype=np.uint8)
                self.freed = False

            def __int__(self):
                fake._need_context("use a device pointer")
                return int(self.buf.ctypes.data)

            def free(self):
                self.freed = True

        class Stream:
            def __init__(self):
                fake._need_context("create a stream")
                self.handle = 1234

            def synchronize(self):
                pass

        self.Context, self.Device, self.Stream = Context, Device, Stream
        self.primary = Context("primary")
        self.device = Device(0)
        self._Alloc = Alloc

    @property
    def stack(self) -> list:
        if not hasattr(self._tls, "stack"):
            self._tls.stack = []
        return self._tls.stack

    def _switch(self, what: str) -> None:
        if self.in_build:
            raise ContextSwitchDuringBuild(f"context {what} during a TensorRT build")

    def _need_context(self, what: str) -> None:
        if not self.stack:
            raise RuntimeError(f"cannot {what}: no current CUDA context on this thread")

    def building(self):
        fake = self

        class _Build:
            def __enter__(self):
                fake.in_build = True
                fake.build_context = fake.Context.get_current()

            def __exit__(self, *exc):
                fake.in_build = False

        return _Build()

    # pycuda.driver functions
    def init(self):
        pass

    def mem_alloc(self, n):
        self._need_context("allocate")
        return self._Alloc(n)

    def memcpy_htod(self, dst, src):
        self._need_context("copy")
        raw = np.ascontiguousarray(src).reshape(-1).view(np.uint8)
        dst.buf[: raw.nbytes] = raw

    def memcpy_dtoh(self, dst, src):
        self._need_context("copy")
        out = dst.reshape(-1).view(np.uint8)
        if isinstance(src, int):
            out[:] = np.frombuffer(ctypes.string_at(src, out.nbytes), dtype=np.uint8)
        else:
            out[:] = src.buf[: out.nbytes]

    def memset_d8(self, dst, value, n):
        dst.buf[:n] = value

    def module_from_buffer(self, ptx):
        self.loaded_ptx = ptx
        return types.SimpleNamespace(get_function=lambda name: None)


def _module(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
    mod.__dict__.update(attrs)
    return mod


def install_fake_pycuda(monkeypatch) -> FakeCuda:
    cuda = FakeCuda()

    def source_module(source, no_extern_c=False):
        # Like pycuda.compiler: it runs nvcc, which must be on PATH.
        if shutil.which("nvcc") is None:
            raise FileNotFoundError("[Errno 2] No such file or directory: 'nvcc'")
        return types.SimpleNamespace(get_function=lambda name: None)

    driver = _module("pycuda.driver", Context=cuda.Context, Device=cuda.Device,
                     Stream=cuda.Stream, init=cuda.init, mem_alloc=cuda.mem_alloc,
                     memcpy_htod=cuda.memcpy_htod, memcpy_dtoh=cuda.memcpy_dtoh,
                     memset_d8=cuda.memset_d8, module_from_buffer=cuda.module_from_buffer)
    compiler = _module("pycuda.compiler", SourceModule=source_module)
    pkg = _module("pycuda", driver=driver, compiler=compiler)
    pkg.__path__ = []
    monkeypatch.setitem(sys.modules, "pycuda", pkg)
    monkeypatch.setitem(sys.modules, "pycuda.driver", driver)
    monkeypatch.setitem(sys.modules, "pycuda.compiler", compiler)
    return cuda
