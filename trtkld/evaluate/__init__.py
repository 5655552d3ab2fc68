"""`trtkld eval`: calibration (trtkld methods and ORT peers) composed with the fidelity stage
(trtkld.fidelity), DESTRUCTIVE marks, the table and its JSON."""
from __future__ import annotations

from trtkld.evaluate.destructive import (
    DEFAULT_FLOOR_DB,
    DEFAULT_MARGIN_DB,
    explain,
    find_destructive,
    worst_tensors,
)
from trtkld.evaluate.peers import DEFAULT_PEERS, PEERS, PeerSpec, peer_scales, symmetric_scale
from trtkld.evaluate.runner import (
    Candidate,
    EvalReport,
    MethodEval,
    evaluate,
    evaluate_candidates,
    mark_destructive,
    peer_candidates,
    trtkld_candidates,
)
from trtkld.evaluate.table import JSON_SCHEMA, format_table, report_to_json, write_json

__all__ = [
    "DEFAULT_FLOOR_DB",
    "DEFAULT_MARGIN_DB",
    "DEFAULT_PEERS",
    "JSON_SCHEMA",
    "PEERS",
    "Candidate",
    "EvalReport",
    "MethodEval",
    "PeerSpec",
    "evaluate",
    "evaluate_candidates",
    "explain",
    "find_destructive",
    "format_table",
    "mark_destructive",
    "peer_candidates",
    "peer_scales",
    "report_to_json",
    "symmetric_scale",
    "trtkld_candidates",
    "worst_tensors",
    "write_json",
]
