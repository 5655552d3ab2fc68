"""Batches of calibration data: :class:`Batch`, :class:`CalibrationData`, :func:`open_data`.

Batching (axis 0 of every input is the batch axis):

* batch size: the model's fixed batch dim when it has one (``batch_size`` must then equal it or
  be None, else DataError); otherwise ``batch_size``, default :data:`DEFAULT_BATCH_SIZE` (8).
* samples are grouped in source order; a group is closed when it is full or when the next
  sample's shape differs (possible only with dynamic non-batch dims), so a dynamic-batch model
  can get a shorter batch there and at the end.
* a fixed batch dim needs full batches (TensorRT's calibrator copies exactly that many): a
  short group is padded by repeating its own samples cyclically (``last_batch="pad"``, default,
  logged as a warning with the count) or dropped (``last_batch="drop"``, also logged).
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Callable, Optional, Union

import numpy as np

from trtkld._io import file_sha256, regular_file_problem
from trtkld.data.loader import looks_like_loader_spec, resolve_loader
from trtkld.data.preprocess import PreprocessOptions
from trtkld.data.sources import (
    DataSource,
    FileSource,
    ImageSource,
    LoaderSource,
    NpySource,
    NpzSource,
    Signature,
    kind_of,
    sample_fingerprint,
    sample_signature,
    scan_folder,
)
from trtkld.data.specs import InputSpec
from trtkld.data.validate import Sample, validate_batch
from trtkld.errors import DataError

log = logging.getLogger("trtkld.data")

DEFAULT_BATCH_SIZE = 8
# A data loader that never stops would make calibration run forever: without an explicit
# max_samples, loaders are read up to this many samples, with a warning when it is reached.
DEFAULT_LOADER_SAMPLE_CAP = 10_000
LAST_BATCH_MODES = ("pad", "drop")
# Appended to the source of a row that only fills a fixed batch (the last batch, "pad" mode);
# readers skip such rows when every sample must count once.
PADDING_SUFFIX = " (padding)"


@dataclass(frozen=True)
class Batch:
    """One model run's inputs: name -> C-contiguous array (axis 0 = batch) in the model dtype.

    ``sources`` has one entry per batch row: the file (``path``, ``path[i]`` for row i of an
    array file, or the data-loader item); rows added to fill a fixed batch end in " (padding)".
    """

    inputs: dict[str, np.ndarray]
    sources: tuple[str, ...]

    @property
    def size(self) -> int:
        return len(self.sources)


def _group(stream: Iterable, key: Callable, size: int) -> Iterator[list]:
    """Consecutive runs of equal ``key``, cut every ``size`` items (the batching rule)."""
    group: list = []
    group_key = None
    for item in stream:
        k = key(item)
        if group and k != group_key:
            yield group
            group = []
        group.append(item)
        group_key = k
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def batch_starts(signatures: Sequence[Signature], batch_size: int) -> list[int]:
    """Index of the first sample of every group the batching rule forms over ``signatures``.

    Groups (batches before padding or dropping) start where the previous one is full or the
    sample shape changes; data cut at these indices batches exactly as the whole does.
    """
    starts, index = [], 0
    for group in _group(signatures, lambda s: s, batch_size):
        starts.append(index)
        index += len(group)
    return starts


def resolve_batch_size(specs: Sequence[InputSpec], batch_size: Optional[int]) -> tuple[int, bool]:
    """(batch size, whether the model fixes it); DataError on conflicts."""
    fixed = {s.name: s.batch_dim for s in specs if isinstance(s.batch_dim, int)}
    if len(set(fixed.values())) > 1:
        raise DataError(
            f"the model inputs fix different batch dims (axis 0): {fixed}; trtkld batches all "
            "inputs along axis 0 and cannot feed this model"
        )
    if batch_size is not None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or batch_size <= 0:
            raise DataError(f"batch_size must be a positive integer, found {batch_size!r}")
        batch_size = int(batch_size)
    if fixed:
        (name, dim), = list(fixed.items())[:1]
        if batch_size is not None and batch_size != dim:
            raise DataError(
                f"batch_size {batch_size} conflicts with input {name!r}, whose batch dim is fixed "
                f"at {dim}; omit batch_size or re-export the model with a dynamic batch dim"
            )
        return dim, True
    return (batch_size or DEFAULT_BATCH_SIZE), False


class CalibrationData:
    """Validated, deterministic, re-iterable batches for a model (see module docstring).

    Iterating decodes lazily (images one batch at a time); every pass yields the same batches.
    ``len()`` is the number of batches; for a data loader it is known after one pass, so
    ``len()`` before the first pass runs the loader once.
    """

    def __init__(self, source: DataSource, specs: Sequence[InputSpec], batch_size: int,
                 fixed_batch: bool, last_batch: str = "pad",
                 max_samples: Optional[int] = None):
        if max_samples is not None and (isinstance(max_samples, bool) or int(max_samples) < 1):
            raise DataError(f"max_samples must be a positive integer, found {max_samples!r}")
        self.max_samples = None if max_samples is None else int(max_samples)
        self.source = source
        self.specs: list[InputSpec] = list(specs)
        self.batch_size = batch_size
        self.fixed_batch = fixed_batch
        self.last_batch = last_batch
        self._plan: Optional[tuple[int, int, int, int]] = None  # batches, samples, padded, dropped
        self._fingerprints: Optional[list[int]] = None
        self._content_sha256: Optional[str] = None
        self._warned = False
        self._cap_warned = False
        signatures = source.signatures()
        if signatures is not None:
            if self.max_samples is not None:
                signatures = signatures[:self.max_samples]
            self._set_plan(signatures)

    # -- planning -------------------------------------------------------------------------
    def _set_plan(self, signatures: Sequence[Signature]) -> None:
        if not signatures:
            raise DataError(f"{self.source.description}: holds no samples")
        batches = padded = dropped = 0
        for group in _group(signatures, lambda s: s, self.batch_size):
            short = self.batch_size - len(group)
            if self.fixed_batch and short:
                if self.last_batch == "drop":
                    dropped += len(group)
                    continue
                padded += short
            batches += 1
        if batches == 0:
            raise DataError(
                f"{self.source.description}: {len(signatures)} sample(s) are fewer than the fixed "
                f"batch size {self.batch_size} and last_batch='drop' leaves no batch; use "
                "last_batch='pad' or add data"
            )
        self._plan = (batches, len(signatures), padded, dropped)
        self._warn()

    def _warn(self) -> None:
        if self._warned or self._plan is None:
            return
        self._warned = True
        _, samples, padded, dropped = self._plan
        if padded:
            log.warning(
                "%s: %d sample(s) do not fill batches of the model's fixed batch size %d: padded "
                "with %d repeated sample(s) (last_batch='drop' drops them instead)",
                self.source.description, samples, self.batch_size, padded)
        if dropped:
            log.warning(
                "%s: %d of %d sample(s) do not fill a batch of the model's fixed batch size %d "
                "and are DROPPED (last_batch='pad' repeats samples instead)",
                self.source.description, dropped, samples, self.batch_size)

    def _ensure_plan(self) -> tuple[int, int, int, int]:
        if self._plan is None:
            for _ in self:   # a loader: one pass fixes the plan and the fingerprints
                pass
        assert self._plan is not None
        return self._plan

    def select_files(self, start: int, stop: int, *, absolute: bool = False) -> CalibrationData:
        """The same data restricted to files ``[start, stop)`` of a file-backed source.

        Batching restarts at the first file, so cut where a batch starts (see
        :func:`batch_starts`) to get exactly the batches the whole data has there.
        ``absolute``: the part names its files by absolute paths (to be read elsewhere).
        """
        if not isinstance(self.source, FileSource):
            raise DataError(
                f"{self.source.description}: only file-backed data (image, .npy or .npz files) "
                "can be split by file"
            )
        if self.max_samples is not None:
            raise DataError(
                f"{self.source.description}: max_samples={self.max_samples} (--max-samples) "
                "cannot be combined with splitting the data into shards; drop one of them"
            )
        part = copy.copy(self)
        part.source = self.source.subset(start, stop, absolute=absolute)
        part._plan = None
        part._warned = True   # the whole data already warned about padding or dropping
        part._set_plan(part.source.signatures())
        return part

    # -- public API -------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._ensure_plan()[0]

    @property
    def num_samples(self) -> int:
        """Distinct samples read from the source (padding not counted, dropped ones counted)."""
        return self._ensure_plan()[1]

    @property
    def num_padded(self) -> int:
        return self._ensure_plan()[2]

    @property
    def num_dropped(self) -> int:
        return self._ensure_plan()[3]

    @property
    def kind(self) -> str:
        return self.source.kind

    def describe(self) -> str:
        """One line for logs: source, batches and batch size."""
        return (f"{self.source.description}: {self.num_samples} sample(s) in {len(self)} "
                f"batch(es) of {'exactly' if self.fixed_batch else 'up to'} {self.batch_size}")

    def _limited_samples(self) -> Iterator[Sample]:
        """The source's samples, cut at ``max_samples`` (or, for a loader without it, at
        :data:`DEFAULT_LOADER_SAMPLE_CAP` with a warning)."""
        limit = self.max_samples
        capped = limit is None and self.source.kind == "loader"
        if capped:
            limit = DEFAULT_LOADER_SAMPLE_CAP
        stream = self.source.samples()
        if limit is None:
            yield from stream
            return
        yield from itertools.islice(stream, limit)
        if capped and not self._cap_warned and next(stream, None) is not None:
            self._cap_warned = True
            log.warning(
                "%s: stopped after %d samples (the default cap for data loaders, which may "
                "never end); pass --max-samples N (max_samples=N) to choose how many are read",
                self.source.description, limit)

    def __iter__(self) -> Iterator[Batch]:
        checking = self.source.checks_repeatability
        prints: list[int] = []
        signatures: list[Signature] = []
        content = hashlib.sha256()

        def tracked(stream: Iterable[Sample]) -> Iterator[Sample]:
            for sample in stream:
                if checking:
                    _hash_sample(content, sample, self.specs)
                    fp = sample_fingerprint(sample, self.specs)
                    k = len(prints)
                    if self._fingerprints is not None and (
                            k >= len(self._fingerprints) or self._fingerprints[k] != fp):
                        raise DataError(
                            f"{sample[1]}: sample {k} differs from the previous pass over the "
                            "data; calibration reads the data twice, so the loader must yield "
                            "the same samples in the same order every time it is called"
                        )
                    prints.append(fp)
                    signatures.append(sample_signature(sample, self.specs))
                yield sample

        for group in _group(tracked(self._limited_samples()),
                            lambda s: sample_signature(s, self.specs), self.batch_size):
            if self.fixed_batch and len(group) < self.batch_size:
                if self.last_batch == "drop":
                    continue
                group = group + [
                    (group[i % len(group)][0], group[i % len(group)][1] + PADDING_SUFFIX)
                    for i in range(self.batch_size - len(group))
                ]
            yield self._assemble(group)

        if checking:
            if self._fingerprints is not None and len(prints) != len(self._fingerprints):
                raise DataError(
                    f"data loader {self.source.description}: yielded {len(prints)} sample(s), "
                    f"the previous pass yielded {len(self._fingerprints)}; the loader must "
                    "yield the same samples every time it is called"
                )
            if self._fingerprints is None:
                self._fingerprints = prints
                self._content_sha256 = content.hexdigest()
                self._set_plan(signatures)

    def fingerprint(self) -> dict:
        """What the data are, for a cache's provenance: ``data_sha256`` (file sources: sha256
        over the ordered list of (relative path, file sha256); loaders: sha256 over the ordered
        samples' shapes, dtypes and bytes, from the first pass), plus the kind, sample count,
        batching and the resolved image preprocessing (None for array data)."""
        paths = getattr(self.source, "paths", None)
        if paths is None:
            self._ensure_plan()
            data_sha256 = self._content_sha256
        else:
            digest = hashlib.sha256()
            root = os.path.commonpath([os.path.abspath(p) for p in paths]) if len(paths) > 1 \
                else os.path.dirname(os.path.abspath(paths[0]))
            for path in paths:
                rel = os.path.relpath(os.path.abspath(path), root).replace(os.sep, "/")
                digest.update(f"{rel}\0{file_sha256(path)}\n".encode())
            digest.update(f"max_samples={self.max_samples}".encode())
            data_sha256 = digest.hexdigest()
        pipeline = getattr(self.source, "pipeline", None)
        return {
            "data_sha256": data_sha256,
            "kind": self.kind,
            "num_samples": self.num_samples,
            "batch_size": self.batch_size,
            "last_batch": self.last_batch,
            "preprocessing": None if pipeline is None else pipeline.describe(),
        }

    def _assemble(self, group: list[Sample]) -> Batch:
        inputs = {
            spec.name: np.ascontiguousarray(np.stack([s[0][spec.name] for s in group]))
            for spec in self.specs
        }
        sources = tuple(s[1] for s in group)
        validate_batch(inputs, self.specs, sources, self.batch_size, self.fixed_batch)
        return Batch(inputs=inputs, sources=sources)


def open_data(
    source: Union[str, os.PathLike, Callable, Iterable],
    specs: Sequence[InputSpec],
    *,
    batch_size: Optional[int] = None,
    preprocess: Optional[PreprocessOptions] = None,
    last_batch: str = "pad",
    allow_nonfinite: bool = False,
    max_samples: Optional[int] = None,
) -> CalibrationData:
    """Calibration data for a model with inputs ``specs``.

    source: an image folder or file, a .npy file/folder (single-input models), a .npz
        file/folder (arrays keyed by input name), a ``"module:function"`` /
        ``"path/to/script.py:function"`` string or a callable returning an iterable of items
        (dicts input name -> batch or single sample), or a re-iterable collection of items.
    batch_size: for dynamic batch dims (default 8); must be None or equal a fixed batch dim.
    preprocess: image options (None: defaults resolved from the model input); ignored, with a
        warning, for non-image sources.
    last_batch: "pad" or "drop": what to do with samples that do not fill a fixed batch.
    allow_nonfinite: accept NaN/Inf in float array data (otherwise DataError).
    max_samples: read at most this many samples (None: all; data loaders stop at
        :data:`DEFAULT_LOADER_SAMPLE_CAP` with a warning, since they may never end).

    Raises :class:`DataError` naming the file/input and the expected and found values. Image
    headers and array headers are read here (so bad files fail early); pixels are decoded
    during iteration.
    """
    specs = list(specs)
    if not specs:
        raise DataError("the model has no inputs to feed")
    for spec in specs:
        if spec.rank == 0:
            raise DataError(
                f"input {spec.name!r} is a scalar (rank 0); trtkld batches every input along "
                "axis 0 and cannot feed scalar inputs"
            )
    if last_batch not in LAST_BATCH_MODES:
        raise DataError(f"last_batch must be one of {LAST_BATCH_MODES}, found {last_batch!r}")
    size, fixed = resolve_batch_size(specs, batch_size)
    data_source = _make_source(source, specs, preprocess, allow_nonfinite)
    if preprocess is not None and data_source.kind != "images":
        log.warning("%s: image preprocessing options are ignored for %s data",
                    data_source.description, data_source.kind)
    return CalibrationData(data_source, specs, size, fixed, last_batch, max_samples)


def _hash_sample(digest, sample: Sample, specs: Sequence[InputSpec]) -> None:
    for spec in specs:
        arr = np.ascontiguousarray(sample[0][spec.name])
        digest.update(f"{spec.name}{arr.shape}{arr.dtype}".encode())
        digest.update(arr.reshape(-1).view(np.uint8))


def _make_source(source, specs: list[InputSpec], preprocess: Optional[PreprocessOptions],
                 allow_nonfinite: bool) -> DataSource:
    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        if os.path.isdir(text):
            kind, paths = scan_folder(text)
            return _file_source(kind, paths, specs, preprocess, allow_nonfinite,
                                f"data folder {text!r}")
        if os.path.isfile(text):
            kind = kind_of(text)
            if kind is None:
                raise DataError(
                    f"data file {text!r}: unknown type (expected an image, .npy or .npz file)")
            return _file_source(kind, [text], specs, preprocess, allow_nonfinite,
                                f"data file {text!r}")
        if isinstance(source, str) and looks_like_loader_spec(text) and not (
                kind_of(text) or os.sep in text.rsplit(":", 1)[1]):
            return LoaderSource(resolve_loader(text), specs, repr(text), allow_nonfinite)
        if os.path.exists(text):
            raise DataError(f"data source {text!r} {regular_file_problem(text)}")
        raise DataError(f"data source {text!r} does not exist (expected a file or folder, or "
                        "'module:function' for a data loader)")
    if callable(source):
        name = getattr(source, "__qualname__", None) or type(source).__name__
        return LoaderSource(source, specs, repr(name), allow_nonfinite)
    if isinstance(source, Iterable):
        if iter(source) is source:
            raise DataError(
                f"data source is a one-shot {type(source).__name__}; calibration reads the data "
                "twice: pass the function that creates it (or a list)"
            )
        return LoaderSource(lambda: source, specs, f"<{type(source).__name__}>", allow_nonfinite)
    raise DataError(f"data source of type {type(source).__name__} is not supported (expected a "
                    "path, 'module:function', a callable or a list of dicts)")


def _file_source(kind: str, paths: list[str], specs: list[InputSpec],
                 preprocess: Optional[PreprocessOptions], allow_nonfinite: bool,
                 description: str) -> DataSource:
    if kind == "image":
        if len(specs) != 1:
            raise DataError(
                f"{description}: images feed single-input models only; the model has inputs "
                f"{[s.name for s in specs]}: use .npz files keyed by input name or a data loader"
            )
        pipeline = (preprocess or PreprocessOptions()).resolve(specs[0])
        if pipeline.dtype != specs[0].dtype:
            raise DataError(
                f"{description}: preprocessing dtype {pipeline.dtype} differs from input "
                f"{specs[0].name!r} dtype {specs[0].dtype}"
            )
        return ImageSource(paths, specs[0], pipeline, description)
    if kind == "npy":
        return NpySource(paths, specs, description, allow_nonfinite)
    return NpzSource(paths, specs, description, allow_nonfinite)
