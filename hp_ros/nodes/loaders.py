"""Core objects from node parameters: the hand, the object, a fixed camera->hand transform; their warm-up."""
from __future__ import annotations

from typing import Optional

import numpy as np


def load_hand(params: dict):
    """HandModel from the ``hand_urdf`` / ``joint_naming`` / ``mesh_search_path`` parameters."""
    from hp_ros.core.hand import HandModel

    if params.get("hand_urdf"):
        search = [p for p in params.get("mesh_search_path", []) if p]
        return HandModel.from_urdf(params["hand_urdf"], naming=params["joint_naming"], mesh_search_path=search)
    return HandModel.default(naming=params["joint_naming"])


def load_object(params: dict):
    """ObjectModel from the ``object_mesh`` / ``object_units`` parameters."""
    from hp_ros.core.objects import ObjectModel

    return ObjectModel.from_spec(params["object_mesh"], units=params["object_units"])


def camera_to_hand_from_param(value) -> Optional[np.ndarray]:
    """``[x y z qx qy qz qw]`` -> (4,4) T_cam_hand; ``[0.0]`` (unset) -> None."""
    if len(value) != 7:
        return None
    import torch

    from hp_ros.core import se3

    T = se3.pose_from_xyz_quat(torch.tensor(value[:3], dtype=torch.float64),
                               torch.tensor(value[3:], dtype=torch.float64), dtype=torch.float64)
    return T.numpy()


def warm_up(sdf, hand) -> None:
    """Compile/load the Warp SDF kernels and run the hand FK once before subscribing: the first
    query takes seconds, and a node that stalls on its first frame overflows its input queues
    (observed: a 3 s bag replayed while the first frame compiled -> ~8 poses out of 91)."""
    import torch

    with torch.no_grad():
        sdf.query(torch.zeros(1, 1, 3, dtype=torch.float32))
        hand.surface_points(hand.zero_q())
