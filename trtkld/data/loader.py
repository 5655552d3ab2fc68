"""Resolve ``--data-loader`` strings: ``package.module:function`` or ``path/to/script.py:function``.

The function is called with no arguments once per pass over the data and must return (or, as a
generator function, yield) an iterable of items. An item is a dict ``input name -> array`` (for a
single-input model also a bare array); each array is a batch (same rank as the model input,
axis 0 = samples) or one sample (rank one lower).
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from typing import Callable

from trtkld.errors import DataError


def looks_like_loader_spec(text: str) -> bool:
    """True for ``x:y`` strings whose part after the last colon is a Python identifier."""
    if ":" not in text:
        return False
    func = text.rsplit(":", 1)[1]
    return func.isidentifier()


def resolve_loader(spec: str) -> Callable:
    """The callable named by ``spec``; DataError naming the spec and what went wrong."""
    if ":" not in spec:
        raise DataError(
            f"data loader {spec!r}: expected 'module:function' or 'path/to/script.py:function'"
        )
    target, func_name = spec.rsplit(":", 1)
    if not target or not func_name.isidentifier():
        raise DataError(
            f"data loader {spec!r}: expected 'module:function' or 'path/to/script.py:function', "
            f"found module {target!r} and function {func_name!r}"
        )
    if target.endswith(".py") or os.sep in target or "/" in target:
        module = _load_script(target, spec)
    else:
        module = _import_module(target, spec)
    if not hasattr(module, func_name):
        public = sorted(n for n in vars(module) if not n.startswith("_")
                        and callable(getattr(module, n)))
        raise DataError(
            f"data loader {spec!r}: module {target!r} has no attribute {func_name!r} "
            f"(callables found: {', '.join(public[:12]) or 'none'})"
        )
    func = getattr(module, func_name)
    if not callable(func):
        raise DataError(
            f"data loader {spec!r}: {func_name!r} is a {type(func).__name__}, expected a function"
        )
    return func


def _import_module(target: str, spec: str):
    """Import ``target`` as ``python -m`` would: the current folder first on the path (the
    console script's own folder is there instead, so ``mymodule:load`` next to the user would
    not be found otherwise)."""
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(target)
    except SystemExit as exc:
        raise DataError(
            f"data loader {spec!r}: importing module {target!r} called sys.exit({exc.code!r})"
        ) from None
    except Exception as exc:  # ImportError, or whatever the module raises while importing
        raise DataError(
            f"data loader {spec!r}: cannot import module {target!r} "
            f"({type(exc).__name__}: {exc}); the current folder {cwd!r} and the Python path "
            "were searched"
        ) from exc
    finally:
        if added:
            sys.path.remove(cwd)


def _load_script(path: str, spec: str):
    if not os.path.isfile(path):
        raise DataError(f"data loader {spec!r}: script {path!r} not found")
    abspath = os.path.abspath(path)
    # A stable, unique module name so two scripts called loader.py do not collide.
    name = "_trtkld_loader_" + hashlib.sha1(abspath.encode()).hexdigest()[:16]
    if name in sys.modules:
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(name, abspath)
    if module_spec is None or module_spec.loader is None:
        raise DataError(f"data loader {spec!r}: {path!r} cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    # Let the script import its sibling modules, as `python script.py` would.
    script_dir = os.path.dirname(abspath)
    added = script_dir not in sys.path
    if added:
        sys.path.insert(0, script_dir)
    try:
        module_spec.loader.exec_module(module)
    except SystemExit as exc:
        raise DataError(
            f"data loader {spec!r}: running {path!r} called sys.exit({exc.code!r})"
        ) from None
    except Exception as exc:
        raise DataError(
            f"data loader {spec!r}: running {path!r} failed ({type(exc).__name__}: {exc})"
        ) from exc
    finally:
        if added:
            sys.path.remove(script_dir)
    sys.modules[name] = module
    return module
