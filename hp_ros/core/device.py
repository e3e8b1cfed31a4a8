"""Compute device of torch and Warp: ``cpu`` or ``cuda[:N]``, with a fallback to the CPU.

A node's ``device`` parameter goes through :func:`resolve_device`: a malformed value is a
``ValueError`` (a bad parameter); a CUDA device that torch or Warp cannot use here (a CPU build
of torch, no driver, fewer GPUs) is not an error but a :class:`DeviceChoice` on the CPU with the
reason, which the node logs once. Torch and Warp always get the same device.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

_SPEC = re.compile(r"^(cpu|cuda)(?::(\d+))?$")


@dataclass(frozen=True)
class DeviceChoice:
    """The device to run on.

    Attributes:
        requested: the parameter value as given (``cuda:1``).
        torch: ``torch.device`` to run on; warp: the same device in Warp's spelling.
        fallback: why ``requested`` could not be used (None when it is used).
    """

    requested: str
    torch: object
    warp: str
    fallback: Optional[str] = None


def parse_device(spec: str) -> tuple:
    """``"cpu"`` -> ("cpu", None), ``"cuda"`` -> ("cuda", 0), ``"cuda:1"`` -> ("cuda", 1);
    ValueError otherwise (``cpu:0`` included: there is one CPU device)."""
    m = _SPEC.match(str(spec).strip().lower())
    if m is None or (m.group(1) == "cpu" and m.group(2) is not None):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {spec!r}")
    return (m.group(1), None if m.group(1) == "cpu" else int(m.group(2) or 0))


def device_error(spec) -> Optional[str]:
    """A node parameter's check: None for a well-formed device value, else what is wrong."""
    try:
        parse_device(spec)
    except ValueError as e:
        return str(e)
    return None


def cuda_unavailable_reason(index: int) -> Optional[str]:
    """Why CUDA device ``index`` cannot run torch and Warp here (None: it can)."""
    import torch

    if not torch.cuda.is_available():
        return f"torch {torch.__version__} has no usable CUDA (CPU build or no driver)"
    if index >= torch.cuda.device_count():
        return f"torch sees {torch.cuda.device_count()} CUDA device(s), not cuda:{index}"
    from hp_ros.core.warp_setup import get_warp

    wp = get_warp()
    count = wp.get_cuda_device_count() if wp.is_cuda_available() else 0
    if index >= count:
        return f"Warp sees {count} CUDA device(s), not cuda:{index}"
    return None


def resolve_device(spec: str) -> DeviceChoice:
    """The device to use for a ``device`` parameter value (see the module docstring)."""
    import torch

    kind, index = parse_device(spec)
    if kind == "cpu":
        return DeviceChoice(str(spec), torch.device("cpu"), "cpu")
    reason = cuda_unavailable_reason(index)
    if reason is not None:
        return DeviceChoice(str(spec), torch.device("cpu"), "cpu", fallback=reason)
    return DeviceChoice(str(spec), torch.device("cuda", index), f"cuda:{index}")
