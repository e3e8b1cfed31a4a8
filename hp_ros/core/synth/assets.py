"""The models a sequence is made from, loaded once per process (``lru_cache``): the hand, the
object mesh and the object's SDF; and :class:`_single_thread_torch`, the torch threading they
are run under."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional

import torch


@functools.lru_cache(maxsize=8)
def _hand_model(urdf: Optional[str], naming: str):
    from hp_ros.core.hand import HandModel

    if urdf is None:
        return HandModel.default(naming=naming, dtype=torch.float64)
    path = Path(urdf)
    if not path.is_file():
        raise FileNotFoundError(f"hand URDF not found: {path}")
    return HandModel.from_urdf(path, naming=naming, dtype=torch.float64)


@functools.lru_cache(maxsize=8)
def _object_model(spec: str, units: str):
    import warnings

    from hp_ros.core.objects import ObjectModel

    if not spec.startswith("builtin:") and not Path(spec).is_file():
        raise FileNotFoundError(f"object mesh not found: {spec} (or use builtin:cracker_box / builtin:soup_can)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        obj = ObjectModel.from_spec(spec, units=units) if not spec.startswith("builtin:") else ObjectModel.from_spec(spec)
    return obj


@functools.lru_cache(maxsize=8)
def _object_sdf(spec: str, units: str):
    import warnings

    from hp_ros.core.sdf import MeshSDF

    obj = _object_model(spec, units)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # open YCB meshes: winding-number sign (warned by MeshSDF)
        return MeshSDF(obj.vertices, obj.faces, max_dist=0.05)


class _single_thread_torch:
    """Run torch single-threaded inside the block: the generator's ops are small, and on a busy
    2-core machine intra-op threading made batched FK 10-300x slower (measured)."""

    def __enter__(self):
        self._n = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self._n)
        return False
