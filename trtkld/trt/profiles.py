"""Optimization-profile shapes that obey TensorRT's rules, computed without TensorRT.

TensorRT's rules for a profile of a network input (``IOptimizationProfile::setDimensions``):
the rank is the network input's; a static dimension (``>= 0``) must be given as exactly that
value in MIN, OPT and MAX; only a runtime dimension (``-1``) may vary, with
``0 <= MIN <= OPT <= MAX``. Shapes are tuples of ints; ``network_shapes`` maps input name to the
network's shape with ``-1`` for runtime dimensions.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from trtkld.errors import ModelError

Shape = tuple[int, ...]
Profile = dict[str, tuple[Shape, Shape, Shape]]  # input -> (min, opt, max)


def _fmt(shape: Sequence[int]) -> str:
    return "x".join(str(int(d)) for d in shape)


def is_dynamic(network_shapes: Mapping[str, Sequence[int]]) -> bool:
    """True if any input has a runtime dimension (a profile is then required)."""
    return any(int(d) < 0 for shape in network_shapes.values() for d in shape)


def fixed_profile(
    network_shapes: Mapping[str, Sequence[int]], shapes: Mapping[str, Sequence[int]]
) -> Profile:
    """Profile for data of exactly ``shapes`` (calibration, histogram collection).

    OPT = MAX = ``shapes``; MIN is the same, except a runtime batch axis (axis 0 is ``-1``),
    which goes down to 1 so the engine also takes a shorter batch. Static dims are the
    network's: ``shapes`` that contradict them are a ModelError naming the input.
    """
    profile: Profile = {}
    for name, net_shape in network_shapes.items():
        if name not in shapes:
            raise ModelError(
                f"input {name!r} has runtime dimensions {list(net_shape)} but no calibration "
                f"shape was given (known: {sorted(shapes)})"
            )
        shape = tuple(int(d) for d in shapes[name])
        net = tuple(int(d) for d in net_shape)
        if len(shape) != len(net) or any(d >= 0 and d != s for d, s in zip(net, shape)):
            raise ModelError(
                f"input {name!r}: calibration shape {list(shape)} does not fit the network "
                f"shape {list(net)}"
            )
        low = ((1,) + shape[1:]) if shape and net[0] < 0 else shape
        profile[name] = (low, shape, shape)
    return profile


def check_profile(network_shapes: Mapping[str, Sequence[int]], profile: Mapping) -> Profile:
    """``profile`` as tuples, or a ModelError saying which rule an input breaks."""
    out: Profile = {}
    missing = [n for n in network_shapes if n not in profile]
    if missing:
        raise ModelError(f"the profile gives no shapes for input(s) {missing}")
    unknown = [n for n in profile if n not in network_shapes]
    if unknown:
        raise ModelError(
            f"the profile names {unknown}, which are not network inputs ({sorted(network_shapes)})"
        )
    for name, net_shape in network_shapes.items():
        net = tuple(int(d) for d in net_shape)
        lo, opt, hi = (tuple(int(d) for d in s) for s in profile[name])
        for label, s in (("MIN", lo), ("OPT", opt), ("MAX", hi)):
            if len(s) != len(net):
                raise ModelError(
                    f"input {name!r}: {label} shape {_fmt(s)} has rank {len(s)}, the network "
                    f"shape {list(net)} has rank {len(net)}"
                )
        for axis, d in enumerate(net):
            if d >= 0 and not lo[axis] == opt[axis] == hi[axis] == d:
                raise ModelError(
                    f"input {name!r}: axis {axis} is static ({d}) in the network, so MIN/OPT/MAX "
                    f"must all be {d} there; got {_fmt(lo)} / {_fmt(opt)} / {_fmt(hi)}"
                )
            if d < 0 and not 0 <= lo[axis] <= opt[axis] <= hi[axis]:
                raise ModelError(
                    f"input {name!r}: axis {axis} needs 0 <= MIN <= OPT <= MAX; got "
                    f"{_fmt(lo)} / {_fmt(opt)} / {_fmt(hi)}"
                )
        out[name] = (lo, opt, hi)
    return out


def parse_shapes(text: str, option: str = "--shapes") -> dict[str, Shape]:
    """``"input:1x3x224x224,other:1x10"`` -> ``{"input": (1, 3, 224, 224), "other": (1, 10)}``.

    Like trtexec's ``--minShapes``; an input name may itself contain ``:`` (split on the last).
    """
    shapes: dict[str, Shape] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, dims = item.rpartition(":")
        try:
            if not sep or not name:
                raise ValueError
            shape = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            raise ModelError(
                f"{option}: {item!r} is not NAME:DxDx...D (e.g. input:1x3x224x224)"
            ) from None
        if any(d < 0 for d in shape):
            raise ModelError(f"{option}: {item!r} has a negative dimension")
        shapes[name] = shape
    return shapes


def build_profile(
    network_shapes: Mapping[str, Sequence[int]],
    *,
    min_shapes: Mapping[str, Sequence[int]],
    opt_shapes: Mapping[str, Sequence[int]],
    max_shapes: Mapping[str, Sequence[int]],
    default: Mapping[str, tuple[Shape, Shape, Shape]],
) -> Profile:
    """The engine's build profile: each input's MIN/OPT/MAX from the options where given,
    else from ``default`` (the calibration profile), checked against TensorRT's rules.
    An input given in one option only takes that shape for the others it lacks."""
    profile = {}
    for name in network_shapes:
        given = [m.get(name) for m in (min_shapes, opt_shapes, max_shapes)]
        if all(g is None for g in given):
            profile[name] = default[name]
            continue
        fallback = next(g for g in (given[1], given[2], given[0]) if g is not None)
        profile[name] = tuple(tuple(g if g is not None else fallback) for g in given)
    for option in (min_shapes, opt_shapes, max_shapes):
        unknown = [n for n in option if n not in network_shapes]
        if unknown:
            raise ModelError(
                f"shape option names {unknown}, which are not network inputs "
                f"({sorted(network_shapes)})"
            )
    return check_profile(network_shapes, profile)
