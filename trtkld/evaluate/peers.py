"""ONNX Runtime's own calibrators as reference peers, on the same data and the same placement.

Each peer runs an ORT calibrator (``create_calibrator``: ORT's augmented model, its own histogram
or min/max collection and threshold rule) over the calibration batches, and its ranges are turned
into symmetric scales ``max(|lowest|, |highest|) / 127`` that go through the same
:func:`trtkld.qdq.write_qdq_model` as our methods, so only the thresholds differ.

ORT's calibrators keep every intermediate output of a ``collect_data`` call in memory; batches are
fed in chunks that fit a memory budget.  When the whole calibration set fits (the usual case for a
few hundred images of a small model) it is one call, i.e. exactly ORT's own one-shot behaviour;
otherwise ORT merges chunk histograms itself (its streaming path, which widens the histogram range
in whole bins as larger values appear).
"""
from __future__ import annotations

import contextlib
import io
import math
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import onnx

from trtkld.errors import EvaluationError, ModelError


@dataclass(frozen=True)
class PeerSpec:
    """One ORT calibrator configuration."""

    name: str
    method: str                   # "MinMax" | "Entropy" | "Percentile" (ORT CalibrationMethod)
    extra_options: tuple[tuple[str, Any], ...] = ()
    description: str = ""


PEERS: dict[str, PeerSpec] = {
    p.name: p
    for p in (
        PeerSpec("ort-minmax", "MinMax", (), "ORT MinMax (symmetrised |min|, |max|)"),
        PeerSpec("ort-entropy", "Entropy", (),
                 "ORT Entropy with its defaults (128 bins, 128 quantized bins)"),
        PeerSpec("ort-entropy-2048", "Entropy",
                 (("num_bins", 2048), ("num_quantized_bins", 128), ("symmetric", True)),
                 "ORT Entropy, num_bins=2048, num_quantized_bins=128, symmetric"),
        PeerSpec("ort-percentile", "Percentile", (),
                 "ORT Percentile with its defaults (99.999%, 2048 bins, symmetric)"),
    )
}
DEFAULT_PEERS: tuple[str, ...] = tuple(PEERS)
DEFAULT_MEMORY_BUDGET = 4 << 30  # bytes of intermediate outputs per collect_data call


def resolve_peers(names: Sequence[str]) -> list[PeerSpec]:
    """PeerSpecs for ``names``; EvaluationError naming the unknown ones."""
    unknown = [n for n in names if n not in PEERS]
    if unknown:
        raise EvaluationError(f"unknown peer(s) {unknown}: expected some of {', '.join(PEERS)}")
    return [PEERS[n] for n in names]


def symmetric_scale(lowest: float, highest: float) -> np.float32:
    """The symmetric INT8 scale of a range: ``max(|lowest|, |highest|) / 127`` as float32.

    A range that is zero, NaN or infinite gets the documented all-zero fallback amax = 1.0
    (never a 0/NaN/inf scale), like trtkld's own searches.
    """
    amax = max(abs(float(lowest)), abs(float(highest)))
    if not math.isfinite(amax) or amax <= 0.0:
        amax = 1.0
    return np.float32(amax / 127.0)


class _ListReader:
    """ORT ``CalibrationDataReader`` over a list of feed dicts."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self._feeds = iter(feeds)

    def get_next(self) -> Optional[dict[str, np.ndarray]]:
        return next(self._feeds, None)

    def __iter__(self):
        return self

    def __next__(self):
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item


def _single_samples(feeds: Iterable[dict[str, np.ndarray]]) -> Iterator[dict[str, np.ndarray]]:
    """Split batches into one-sample feeds.

    ORT's histogram calibrators stack every kept output of a collect_data call with
    ``np.asarray(list)``, which fails when batches differ in size (a short last batch); one
    sample per run makes every output the same shape.  The values seen are the same.
    """
    for feed in feeds:
        n = next(iter(feed.values())).shape[0]
        for i in range(n):
            yield {k: v[i:i + 1] for k, v in feed.items()}


def _chunks(
    feeds: Iterable[dict[str, np.ndarray]], samples_per_chunk: int
) -> Iterator[list[dict[str, np.ndarray]]]:
    """One-sample feeds in chunks of at most ``samples_per_chunk`` samples OF ONE SHAPE.

    ORT's histogram calibrators stack a call's outputs into one array, which fails when inputs
    differ in shape (a recognizer's text lines of several widths); samples are grouped by input
    shape (first appearance order), and ORT merges the calls' histograms itself.
    """
    groups: dict[tuple, list[dict[str, np.ndarray]]] = {}
    for feed in _single_samples(feeds):
        key = tuple((k, v.shape) for k, v in feed.items())
        chunk = groups.setdefault(key, [])
        chunk.append(feed)
        if len(chunk) >= samples_per_chunk:
            yield chunk
            groups[key] = []
    for chunk in groups.values():
        if chunk:
            yield chunk


def peer_scales(
    prepared_model: onnx.ModelProto,
    feeds: Iterable[dict[str, np.ndarray]],
    peer: PeerSpec,
    *,
    op_types: Sequence[str],
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    quiet: bool = True,
) -> dict[str, np.float32]:
    """Run one ORT calibrator and return tensor -> symmetric scale.

    Args:
        prepared_model: the model as :func:`trtkld.qdq.prepare_model` returns it (opset >= 13,
            shape-inferred), so ORT calibrates exactly the tensors the Q/DQ writer sees.
        feeds: calibration batches as ``{input name: array}``, re-iterable (read twice).
        peer: which calibrator.
        op_types: op types whose inputs/outputs ORT calibrates (the Q/DQ placement).
        memory_budget: bytes of ORT intermediate outputs per ``collect_data`` call.
        quiet: swallow ORT's own prints.
    """
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    method = getattr(CalibrationMethod, peer.method)
    first = next(iter(_single_samples(feeds)), None)
    if first is None:
        raise ModelError(f"peer {peer.name}: no calibration samples")
    sink = io.StringIO()
    redirect = contextlib.redirect_stdout(sink) if quiet else contextlib.nullcontext()
    with tempfile.TemporaryDirectory(prefix="trtkld-peer-") as tmp, redirect:
        model_path = Path(tmp) / "model.onnx"
        onnx.save(prepared_model, str(model_path))
        try:
            calibrator = create_calibrator(
                model_path,
                list(op_types),
                augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                calibrate_method=method,
                extra_options=dict(peer.extra_options),
            )
        except Exception as exc:
            raise ModelError(f"peer {peer.name}: ONNX Runtime calibrator failed: {exc}") from exc
        per_chunk = _samples_per_chunk(calibrator, first, memory_budget)
        try:
            for chunk in _chunks(feeds, per_chunk):
                calibrator.collect_data(_ListReader(chunk))
            ranges = calibrator.compute_data()
        except Exception as exc:
            raise ModelError(f"peer {peer.name}: ONNX Runtime calibrator failed: {exc}") from exc
        finally:
            # The calibrator holds an InferenceSession on files in tmp; drop it before cleanup.
            del calibrator
    out: dict[str, np.float32] = {}
    for name, data in ranges.items():
        lo, hi = data.range_value
        out[name] = symmetric_scale(float(np.min(lo)), float(np.max(hi)))
    return out


def _samples_per_chunk(calibrator, first_feed: Mapping[str, np.ndarray], budget: int) -> int:
    """How many samples one collect_data call may take so its kept outputs fit ``budget``."""
    session = getattr(calibrator, "infer_session", None)
    batch = next(iter(first_feed.values())).shape[0] if first_feed else 1
    if session is None or batch == 0:
        return max(1, batch)
    outputs = session.run(None, dict(first_feed))
    per_sample = max(1, sum(np.asarray(o).nbytes for o in outputs) // max(1, batch))
    # Histogram calibrators copy the kept outputs once more (np.asarray of the list): halve.
    return max(1, int(budget // (2 * per_sample)))
