"""Exception types shared by every stage.

Every error a user can fix derives from :class:`TrtkldError`; the CLI prints those as one line
(no traceback). Messages name the file, input or tensor, what was expected and what was found.
"""
from __future__ import annotations


class TrtkldError(Exception):
    """Base class of all user-facing errors."""


class DataError(TrtkldError, ValueError):
    """Calibration data is missing, unreadable, or does not match the model's inputs."""


class CacheFormatError(TrtkldError, ValueError):
    """A calibration cache file is malformed, or a cache cannot be written as asked."""


class SearchError(TrtkldError, ValueError):
    """A histogram cannot be searched with the chosen method (e.g. a bin count ppq rejects)."""


class HistogramError(TrtkldError, ValueError):
    """Histograms cannot be merged, loaded or filled as asked."""


class ModelError(TrtkldError, ValueError):
    """The ONNX model cannot be loaded or instrumented."""


class TensorRTUnavailableError(TrtkldError, RuntimeError):
    """TensorRT or pycuda is missing, or the TensorRT version has no calibrator API."""


class EvaluationError(TrtkldError, ValueError):
    """A fidelity evaluation or refinement cannot run as asked (unknown peer, bad option,
    outputs that do not match)."""


class OutputError(TrtkldError, OSError):
    """A result file (engine, model, report) cannot be written; names the file and the reason."""


class QdqCoverageError(ModelError):
    """A Q/DQ model would quantize no weighted op, or too few of them without being asked to
    leave any in float (e.g. weights that are not initializers, scales for another model)."""


class OutputPathError(TrtkldError, ValueError):
    """An output path would overwrite an input or another output, or cannot be written."""
