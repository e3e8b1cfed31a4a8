"""Core objects from node parameters: the hand, the object, a fixed camera->hand transform; their warm-up
(the tracking node's SDF and hand, the segmentation node's segmenter)."""
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


def warm_up_segmenter(hand, cfg, object_model, uses_prior: bool, logger) -> None:
    """Run the segmenter once on a dummy 640x480 frame (torch, rasteriser, aligner first calls
    take ~1 s; paid here instead of dropping the stream's first frames): the segmentation node's,
    before it subscribes."""
    import time

    from hp_ros.core.segmentation.segmenter import Segmenter

    t0 = time.monotonic()
    try:
        K = np.array([[600.0, 0.0, 320.0], [0.0, 600.0, 240.0], [0.0, 0.0, 1.0]])
        seg = Segmenter(K, 640, 480, hand, cfg, None, object_model=object_model)
        T = np.eye(4)
        T[2, 3] = 0.5
        q = np.zeros(len(hand.joint_names))
        T_obj = np.eye(4)
        T_obj[2, 3] = 0.6
        depth = np.full((480, 640), 0.6, np.float32)
        if uses_prior:
            # a depth image that shows the object at the prior, so that the model backend's whole
            # path (search, ICP, Warp rasteriser) runs now, not on the first real frames: a
            # first-call stall of ~1 s overflowed the image queue and dropped frames
            d_obj = seg.model_masker.render(T_obj, (0, 0, 640, 480), 1.0)
            depth = np.where(np.isfinite(d_obj), d_obj, 0.9).astype(np.float32)
        for k in range(3 if uses_prior else 1):  # the model backend twice, then its fallback
            seg.segment(np.full((480, 640, 3), 128, np.uint8), depth, q, T, None,
                        T_cam_obj_prior=T_obj if uses_prior and k < 2 else None)
    except Exception as e:  # noqa: BLE001 - a failed warm-up only costs the first frames' speed
        logger.info(f"warm-up skipped: {e}")
    logger.info(f"warm-up {time.monotonic() - t0:.2f} s")
