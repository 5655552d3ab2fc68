"""Run the shards' passes as Ray tasks and merge them on the driver.

``collect_histograms_ray`` = ``trtkld.pipeline.collect_histograms`` on a cluster: the same
HistogramSet, bit for bit (see the package docstring for why). ``ray`` is imported inside the
functions here, never when trtkld is imported.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Optional

from trtkld.data import CalibrationData
from trtkld.data.shards import DataShard, plan_shards
from trtkld.histogram import HistogramSet
from trtkld.scaleout.errors import RayUnavailableError, ScaleOutError, ShardFailedError
from trtkld.scaleout.work import (
    CollectJob,
    merge_histograms,
    merge_ranges,
    package_versions,
    shard_histograms,
    shard_ranges,
)

logger = logging.getLogger("trtkld.scaleout")

LOCAL = "local"
# A local cluster's shared-memory object store. Shard results are histograms (tensors x bins x
# 8 bytes, a few MB per shard), so a few hundred MB is plenty and leaves memory to the models.
LOCAL_OBJECT_STORE_BYTES = 300 * 2**20
DEFAULT_MAX_RETRIES = 2


def import_ray():
    """The ``ray`` module, or RayUnavailableError naming the extra that installs it."""
    try:
        import ray
    except ImportError as exc:
        raise RayUnavailableError(
            "sharded calibration runs on Ray, which is not installed here "
            f"({type(exc).__name__}: {exc}); install the 'ray' extra: "
            "pip install 'trtkld[ray]'"
        ) from exc
    return ray


CONNECT_TIMEOUT_S = 10.0


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """ScaleOutError unless ``host:port`` (or ``ray://host:port``) accepts a TCP connection.

    Ray itself keeps retrying an unreachable address for minutes; this answers in seconds.
    Addresses without a port (``auto``) are left to Ray.
    """
    import socket

    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit():
        return
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise ScaleOutError(
            f"cannot reach the Ray cluster at {address!r} within {timeout:g} s "
            f"({type(exc).__name__}: {exc}); check the address (head node's GCS port, "
            "default 6379, or ray://host:10001 for Ray Client) and that it is running"
        ) from exc


class RayCluster:
    """Context manager: a connection to a Ray cluster for the duration of one calibration.

    address ``"local"`` (or None) starts a local cluster sized to this machine (``num_cpus``
    defaults to ``os.cpu_count()``), without dashboard, with a small object store, and shuts it
    down on exit -- also on Ctrl-C or an error. Any other address (``ray://host:10001``,
    ``host:6379``, ``auto``) connects to a running cluster and disconnects on exit. When this
    process is already connected (``ray.init`` called by the user), that connection is used
    and left open.
    """

    def __init__(self, address: Optional[str] = LOCAL, *, num_cpus: Optional[int] = None,
                 object_store_bytes: int = LOCAL_OBJECT_STORE_BYTES):
        self.address = address or LOCAL
        self.num_cpus = num_cpus
        self.object_store_bytes = object_store_bytes
        self.ray: Any = None
        self._owned = False

    def __enter__(self) -> RayCluster:
        ray = self.ray = import_ray()
        if ray.is_initialized():
            return self
        # no usage-stats prompt or upload from a calibration run
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        # workers' own log lines stay on the workers: failures come back as exceptions
        quiet = dict(log_to_driver=False, logging_level=logging.WARNING)
        try:
            if self.address == LOCAL:
                ray.init(address="local", num_cpus=self.num_cpus or os.cpu_count() or 1,
                         object_store_memory=self.object_store_bytes,
                         include_dashboard=False, **quiet)
            else:   # the cluster's own settings (dashboard, object store) are not ours to set
                check_reachable(self.address)
                ray.init(address=self.address, **quiet)
        except Exception as exc:  # ConnectionError, ValueError, RuntimeError, ...
            where = "start a local Ray cluster" if self.address == LOCAL else \
                f"connect to the Ray cluster at {self.address!r}"
            raise ScaleOutError(f"cannot {where}: {type(exc).__name__}: {exc}") from exc
        self._owned = True
        return self

    def __exit__(self, *exc_info) -> None:
        if self._owned:
            self.ray.shutdown()
            self._owned = False

    def num_worker_cpus(self) -> int:
        """CPUs the cluster offers to tasks (the default number of shards)."""
        return max(1, int(self.ray.cluster_resources().get("CPU", 1)))


class ShardRunner:
    """Runs one function per shard as Ray tasks, with retries, one progress bar and clean stops.

    Results come back in shard order whatever order the tasks finish in. A task that still
    fails after ``max_retries`` retries raises ShardFailedError naming the shard and its files;
    Ctrl-C cancels the outstanding tasks and re-raises KeyboardInterrupt.
    """

    def __init__(self, ray, shards: Sequence[DataShard], *, total_steps: int,
                 max_retries: int = DEFAULT_MAX_RETRIES, quiet: bool = False):
        self.ray = ray
        self.shards = list(shards)
        self.max_retries = max_retries
        self._bar = None
        if not quiet:
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, unit="shard", dynamic_ncols=True, leave=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def map(self, function: Callable, *args: Any, desc: str) -> list:
        """``[function(*args[:1], shard.data, *args[1:]) for shard]`` as Ray tasks.

        ``args[0]`` comes before the shard's data, the rest after; every argument is put in
        the object store once and shared by the tasks.
        """
        ray = self.ray
        if self._bar is not None:
            self._bar.set_description(desc)
        remote = ray.remote(num_cpus=1, max_retries=self.max_retries,
                            retry_exceptions=True)(function)
        shared = [ray.put(a) for a in args]
        refs = [remote.remote(shared[0], shard.data, *shared[1:]) for shard in self.shards]
        shard_of = {ref: shard for ref, shard in zip(refs, self.shards)}
        pending = list(refs)
        results = {}
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    results[ref] = self._get(ref, shard_of[ref])
                    if self._bar is not None:
                        self._bar.update(1)
            return [results[ref] for ref in refs]
        except BaseException:  # a failed shard, Ctrl-C: stop the rest before leaving
            for ref in pending:
                ray.cancel(ref, force=True)
            raise

    def _get(self, ref, shard: DataShard):
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayError as exc:
            cause = getattr(exc, "cause", None) or exc
            reason = f"{type(cause).__name__}: {cause}" if cause is not exc else \
                f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1]}"
            raise ShardFailedError(
                f"{shard.describe()} failed after {self.max_retries} retr"
                f"{'y' if self.max_retries == 1 else 'ies'}: {reason}"
            ) from exc


def collect_histograms_ray(
    model: str | os.PathLike,
    data: CalibrationData,
    *,
    num_bins: int,
    shards: Optional[int] = None,
    address: Optional[str] = LOCAL,
    include: Optional[Sequence[str]] = None,
    exclude: Optional[Sequence[str]] = None,
    hist_max: Optional[Mapping[str, float]] = None,
    quiet: bool = False,
    max_retries: int = DEFAULT_MAX_RETRIES,
    num_cpus: Optional[int] = None,
) -> HistogramSet:
    """Two-pass histograms of ``model`` over ``data``, sharded over a Ray cluster.

    Equal (bit for bit) to ``collect_histograms(model, data, num_bins=..., ...)`` in one
    process. ``data`` must be read from files (image / .npy / .npz folder or file); it is cut
    into ``shards`` contiguous shards (default: the cluster's CPUs), each read by its own task
    from the same paths, so the files and ``model`` must be reachable by every worker at the
    same path. ``address``: ``"local"`` starts a local cluster (``num_cpus``: its size,
    default this machine's CPUs) and stops it afterwards; otherwise the address of a running
    cluster. ``hist_max`` fixes the ranges instead of pass 1 (one pass only).
    """
    job = CollectJob(
        model=os.path.abspath(os.fspath(model)),
        num_bins=num_bins,
        include=tuple(include) if include else None,
        exclude=tuple(exclude) if exclude else None,
    )
    with RayCluster(address, num_cpus=num_cpus) as cluster:
        wanted = shards or cluster.num_worker_cpus()
        plan = plan_shards(data, wanted)
        logger.info("%d shard(s) of %s on Ray", len(plan), data.source.description)
        if len(plan) < wanted:
            logger.info("%d shard(s) asked for, but the files and batches of the data allow "
                        "only %d contiguous cut(s)", wanted, len(plan) - 1)
        runner = ShardRunner(cluster.ray, plan, total_steps=len(plan) * (1 if hist_max else 2),
                             max_retries=max_retries, quiet=quiet)
        try:
            if hist_max is not None:
                ranges = {n: float(v) for n, v in hist_max.items()}
                parts = runner.map(shard_histograms, job, ranges, desc="ray: histograms")
                return merge_histograms(parts)
            pass1 = runner.map(shard_ranges, job, desc="ray pass 1/2 (absmax)")
            _check_versions(pass1, plan)
            merged = merge_ranges(pass1)
            parts = runner.map(shard_histograms, job, merged.absmax(), list(merged.names),
                               desc="ray pass 2/2 (histograms)")
            return merge_histograms(parts)
        finally:
            runner.close()


def _check_versions(parts, plan: Sequence[DataShard]) -> None:
    """ScaleOutError when a worker's packages differ from the driver's (results could too)."""
    mine = package_versions()
    for part, shard in zip(parts, plan):
        differ = {k: (mine.get(k), v) for k, v in part.versions.items() if mine.get(k) != v}
        if differ:
            listed = ", ".join(f"{k} {a} here, {b} there" for k, (a, b) in sorted(differ.items()))
            raise ScaleOutError(
                f"the worker that ran {shard.describe()} has other package versions than this "
                f"driver ({listed}); install the same versions on every node so that results "
                "equal a one-process run"
            )
