"""Where calibration samples come from: image files, .npy, .npz, or a Python data loader.

Every source yields :data:`~trtkld.data.validate.Sample` tuples (one sample, no batch axis,
already checked and converted to the model dtypes) in a deterministic order, and can usually
tell the shape of every sample without decoding (:meth:`DataSource.signatures`), which gives
``len()`` without a pass over the data.

Folders are walked recursively; files are ordered by their relative path (``/``-separated,
plain code-point order: ``img10.jpg`` sorts before ``img2.jpg``). Hidden files and folders
(``.name``) and files of other types (README.md, labels.txt, ...) are ignored; a folder must
hold exactly one kind of data (images, .npy, or .npz).
"""
from __future__ import annotations

import copy
import logging
import os
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Callable, Optional

import numpy as np

from trtkld._io import regular_file_problem
from trtkld.data.preprocess import ImagePipeline, image_size
from trtkld.data.specs import InputSpec
from trtkld.data.validate import Sample, check_dtype, check_names, split_item, split_shape
from trtkld.errors import DataError

log = logging.getLogger("trtkld.data")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm")
ARRAY_EXTENSIONS = (".npy", ".npz")

# Shapes of one sample, one tuple per input in spec order: what decides batch grouping.
Signature = tuple[tuple[int, ...], ...]


def kind_of(path: str) -> Optional[str]:
    """'image', 'npy', 'npz' or None from the file extension (case-insensitive)."""
    ext = os.path.splitext(path)[1].lower()
    if ext in IMAGE_EXTENSIONS:
        return "image"
    if ext in ARRAY_EXTENSIONS:
        return ext[1:]
    return None


def scan_folder(folder: str, *, report_ignored: bool = True) -> tuple[str, list[str]]:
    """(kind, sorted file paths) of the data files under ``folder`` (recursive).

    ``report_ignored``: log the non-data files skipped; off for a scan that only checks output
    paths, so a folder opened afterwards is reported once.
    """
    found: dict[str, list[str]] = {}
    ignored: list[str] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if name.startswith("."):
                continue
            path = os.path.join(root, name)
            kind = kind_of(name)
            if kind is None:
                ignored.append(path)
            else:
                # A FIFO or device named *.jpg would block or never end: refuse it up front.
                problem = regular_file_problem(path)
                if problem is not None:
                    raise DataError(f"data folder {folder!r}: data file {path!r} {problem}")
                found.setdefault(kind, []).append(path)
    if ignored and report_ignored:
        log.info("data folder %r: ignoring %d non-data file(s) such as %r", folder,
                 len(ignored), os.path.relpath(sorted(ignored)[0], folder))
    if not found:
        raise DataError(
            f"data folder {folder!r} holds no data files (expected images "
            f"{'/'.join(IMAGE_EXTENSIONS)}, .npy or .npz files; found {len(ignored)} other file(s))"
        )
    if len(found) > 1:
        counts = ", ".join(f"{len(v)} {k}" for k, v in sorted(found.items()))
        raise DataError(
            f"data folder {folder!r} mixes kinds of data files ({counts}); keep one kind per folder"
        )
    kind, paths = found.popitem()

    def order(path: str) -> str:
        return os.path.relpath(path, folder).replace(os.sep, "/")

    return kind, sorted(paths, key=order)


class DataSource:
    """Base class: a deterministic, re-iterable stream of samples."""

    kind = "?"
    description = "?"

    def signatures(self) -> Optional[list[Signature]]:
        """Per-sample shapes without decoding, or None when unknown before a pass."""
        return None

    def samples(self) -> Iterator[Sample]:
        raise NotImplementedError

    @property
    def checks_repeatability(self) -> bool:
        """Whether the data could differ between passes (user code) and must be compared."""
        return False


class FileSource(DataSource):
    """Base class of the sources read from an ordered list of files (``paths``).

    Subclasses give the signatures of each file's samples (:meth:`file_signatures`); the file
    list can be cut into contiguous parts (:meth:`subset`) that are read independently, e.g. by
    the workers of a cluster.
    """

    paths: list[str]
    _file_sigs: Optional[list[list[Signature]]] = None

    def _read_file_signatures(self, path: str) -> list[Signature]:
        raise NotImplementedError

    def file_signatures(self) -> list[list[Signature]]:
        """Per file (in ``paths`` order): the signatures of the samples it holds."""
        if self._file_sigs is None:
            self._file_sigs = [self._read_file_signatures(path) for path in self.paths]
        return self._file_sigs

    def signatures(self) -> list[Signature]:
        return [sig for sigs in self.file_signatures() for sig in sigs]

    def subset(self, start: int, stop: int, *, absolute: bool = False) -> FileSource:
        """The same source over ``paths[start:stop]`` (headers already read are reused);
        ``absolute``: with absolute paths, for readers in another working directory."""
        if not 0 <= start < stop <= len(self.paths):
            raise DataError(
                f"{self.description}: file range [{start}, {stop}) is outside its "
                f"{len(self.paths)} file(s)"
            )
        part = copy.copy(self)
        part.paths = self.paths[start:stop]
        if absolute:
            part.paths = [os.path.abspath(p) for p in part.paths]
        if self._file_sigs is not None:
            part._file_sigs = self._file_sigs[start:stop]
        return part


class ImageSource(FileSource):
    """Image files for a single image input, decoded lazily, one file per sample."""

    kind = "images"

    def __init__(self, paths: Sequence[str], spec: InputSpec, pipeline: ImagePipeline,
                 description: str):
        self.paths = list(paths)
        self.spec = spec
        self.pipeline = pipeline
        self.description = description

    def _read_file_signatures(self, path: str) -> list[Signature]:
        width, height = image_size(path)
        self.pipeline.check_size(width, height, path)
        return [(self.pipeline.sample_shape(width, height),)]

    def samples(self) -> Iterator[Sample]:
        for path in self.paths:
            yield {self.spec.name: self.pipeline.load(path)}, path


def _npy_header(path: str) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # ValueError (pickled/object data), OSError, EOFError, ...
        raise DataError(f"array file {path!r}: cannot be read as .npy ({exc})") from exc


def _npz_members(path: str) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """name -> (shape, dtype) of every array in an .npz, read from the headers only."""
    members: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for entry in archive.namelist():
                key = entry[:-4] if entry.endswith(".npy") else entry
                with archive.open(entry) as handle:
                    version = np.lib.format.read_magic(handle)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
                    elif version == (2, 0):
                        shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
                    else:  # format 3.0 (utf-8 field names): read the whole array
                        handle.close()
                        with np.load(path, allow_pickle=False) as npz:
                            arr = npz[key]
                        shape, dtype = arr.shape, arr.dtype
                members[key] = (tuple(shape), np.dtype(dtype))
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError) as exc:
        raise DataError(f"array file {path!r}: cannot be read as .npz ({exc})") from exc
    if not members:
        raise DataError(f"array file {path!r}: the .npz archive holds no arrays")
    return members


def _item_signatures(shapes: Mapping[str, tuple[int, ...]], specs: Sequence[InputSpec],
                     label: str) -> list[Signature]:
    """Per-sample signatures of one item from its array shapes (the rank rule of split_item);
    checks ranks, fixed dims and that all inputs hold the same number of samples."""
    counts = {}
    per_input = []
    for spec in specs:
        count, sample_shape = split_shape(shapes[spec.name], spec, label)
        counts[spec.name] = count
        per_input.append(sample_shape)
    if len(set(counts.values())) > 1:
        described = ", ".join(f"{n!r}: {'1 (single sample)' if c is None else c}"
                              for n, c in counts.items())
        raise DataError(
            f"{label}: the inputs hold different numbers of samples ({described}); every input "
            "of one item must hold the same samples"
        )
    count = next(iter(counts.values()))
    return [tuple(per_input)] * (1 if count is None else count)


class NpySource(FileSource):
    """One .npy file per item, for single-input models; files are memory-mapped."""

    kind = "npy"

    def __init__(self, paths: Sequence[str], specs: Sequence[InputSpec], description: str,
                 allow_nonfinite: bool):
        if len(specs) != 1:
            names = [s.name for s in specs]
            raise DataError(
                f"{description}: .npy data feeds single-input models only; the model has inputs "
                f"{names}: use .npz files keyed by input name or a data loader"
            )
        self.paths = list(paths)
        self.specs = list(specs)
        self.description = description
        self.allow_nonfinite = allow_nonfinite

    def _read_file_signatures(self, path: str) -> list[Signature]:
        spec = self.specs[0]
        arr = _npy_header(path)
        check_dtype(arr.dtype, spec, f"array file {path!r}")
        return _item_signatures({spec.name: arr.shape}, self.specs, f"array file {path!r}")

    def samples(self) -> Iterator[Sample]:
        name = self.specs[0].name
        for path in self.paths:
            arr = _npy_header(path)
            yield from split_item({name: arr}, self.specs, path,
                                  allow_nonfinite=self.allow_nonfinite)


class NpzSource(FileSource):
    """One .npz file per item, arrays keyed by input name (a lone ``arr_0`` is accepted for a
    single-input model, as written by ``np.savez(path, array)``)."""

    kind = "npz"

    def __init__(self, paths: Sequence[str], specs: Sequence[InputSpec], description: str,
                 allow_nonfinite: bool):
        self.paths = list(paths)
        self.specs = list(specs)
        self.description = description
        self.allow_nonfinite = allow_nonfinite

    def _rename(self, keys: Sequence[str]) -> dict[str, str]:
        if len(self.specs) == 1 and list(keys) == ["arr_0"]:
            return {"arr_0": self.specs[0].name}
        return {k: k for k in keys}

    def _read_file_signatures(self, path: str) -> list[Signature]:
        members = _npz_members(path)
        rename = self._rename(list(members))
        shapes = {rename[k]: v[0] for k, v in members.items()}
        check_names(list(shapes), self.specs, f"array file {path!r}")
        for spec in self.specs:
            check_dtype(members[_key_for(rename, spec.name)][1], spec, f"array file {path!r}")
        return _item_signatures(shapes, self.specs, f"array file {path!r}")

    def samples(self) -> Iterator[Sample]:
        for path in self.paths:
            try:
                with np.load(path, allow_pickle=False) as npz:
                    rename = self._rename(list(npz.files))
                    arrays = {rename[k]: npz[k] for k in npz.files}
            except Exception as exc:
                raise DataError(f"array file {path!r}: cannot be read as .npz ({exc})") from exc
            yield from split_item(arrays, self.specs, path, allow_nonfinite=self.allow_nonfinite)


def _key_for(rename: Mapping[str, str], name: str) -> str:
    return next(k for k, v in rename.items() if v == name)


class LoaderSource(DataSource):
    """Items from user code: a callable (called once per pass) or a re-iterable collection."""

    kind = "loader"

    def __init__(self, factory: Callable[[], Iterable], specs: Sequence[InputSpec],
                 description: str, allow_nonfinite: bool):
        self.factory = factory
        self.specs = list(specs)
        self.description = description
        self.allow_nonfinite = allow_nonfinite

    @property
    def checks_repeatability(self) -> bool:
        return True

    def _items(self) -> Iterator:
        try:
            result = self.factory()
        except DataError:
            raise
        except SystemExit as exc:
            raise _exit_error(self.description, exc) from None
        except Exception as exc:
            raise DataError(
                f"data loader {self.description}: raised {type(exc).__name__}: {exc}") from exc
        if isinstance(result, (Mapping, np.ndarray)):
            result = [result]   # one item returned directly
        if result is None or not isinstance(result, Iterable):
            raise DataError(
                f"data loader {self.description}: returned {type(result).__name__}, expected an "
                "iterable of dicts (input name -> array)"
            )
        iterator = iter(result)
        while True:
            try:
                item = next(iterator)
            except StopIteration:
                return
            except DataError:
                raise
            except SystemExit as exc:
                raise _exit_error(self.description, exc) from None
            except Exception as exc:
                raise DataError(
                    f"data loader {self.description}: raised {type(exc).__name__}: {exc}"
                ) from exc
            yield item

    def samples(self) -> Iterator[Sample]:
        for index, item in enumerate(self._items()):
            label = f"data loader {self.description} item {index}"
            if isinstance(item, np.ndarray) and len(self.specs) == 1:
                item = {self.specs[0].name: item}
            if not isinstance(item, Mapping):
                raise DataError(
                    f"{label}: is a {type(item).__name__}, expected a dict of input name -> "
                    "array" + (" (or an array, for a single-input model)"
                               if len(self.specs) == 1 else "")
                )
            yield from split_item(item, self.specs, label, allow_nonfinite=self.allow_nonfinite)


def _exit_error(description: str, exc: SystemExit) -> DataError:
    # sys.exit() inside a loader would end trtkld with the loader's status (0: "success", with
    # no cache written); it is an error of the data instead.
    return DataError(
        f"data loader {description}: called sys.exit({exc.code!r}) while calibration data was "
        "being read; a loader must return or yield its items (or raise an exception)"
    )


def sample_signature(sample: Sample, specs: Sequence[InputSpec]) -> Signature:
    arrays = sample[0]
    return tuple(tuple(arrays[s.name].shape) for s in specs)


def sample_fingerprint(sample: Sample, specs: Sequence[InputSpec]) -> int:
    """CRC32 over shapes, dtypes and bytes of one sample: detects loaders whose data changes."""
    crc = 0
    for spec in specs:
        arr = np.ascontiguousarray(sample[0][spec.name])
        crc = zlib.crc32(f"{arr.shape}{arr.dtype}".encode(), crc)
        crc = zlib.crc32(arr.reshape(-1).view(np.uint8), crc)
    return crc
