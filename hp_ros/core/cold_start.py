"""A cold start of the object pose (ROS-free): :func:`global_estimate` (the global search of
:mod:`hp_ros.core.global_pose` on a frame, with the hand's surface points), then
:func:`cold_start`: refine its best candidate with all of them, check the answer (:class:`AnswerCheck`),
exclude a rejected answer's basin and search again; with the refinement settings after a global
estimate (``DEFAULT_GLOBAL_*``, :func:`global_refine_config`). Also importable from
:mod:`hp_ros.core.global_pose`."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import numpy as np
import torch

if TYPE_CHECKING:  # global_pose re-exports this module's names: no import of it at run time
    from hp_ros.core.global_pose import GlobalPoseResult, GlobalPoseSearch

__all__ = ["AnswerCheck", "DEFAULT_GLOBAL_HYPOTHESES", "DEFAULT_GLOBAL_ITERATIONS", "DEFAULT_GLOBAL_LR_SCALE",
           "DEFAULT_GLOBAL_PATIENCE", "DEFAULT_GLOBAL_REL_TOL", "global_refine_config", "cold_start",
           "global_estimate", "warm_up_cold_start"]


# poses around the global estimate's best that the refinement's coarse search scores with its candidates
DEFAULT_GLOBAL_HYPOTHESES = 4
# Adam iterations of the refinement after a global estimate (at most: it stops early on convergence)
DEFAULT_GLOBAL_ITERATIONS = 8
# The refinement after a global estimate starts from its depth fit, within millimetres: Adam's steps
# are scaled by DEFAULT_GLOBAL_LR_SCALE (with the refiner's full first steps, 5 mm / 3 deg in every
# coordinate, no later iterate of 12 fitted better than the start: bench_init.py, 26 cold starts), and
# it stops after DEFAULT_GLOBAL_PATIENCE iterations without a relative improvement of
# DEFAULT_GLOBAL_REL_TOL (7 iterations on average there). A stricter stop (2 iterations without 1 %)
# ended the real HOPE frame's refinement after 3 iterations at mask IoU 0.938 (< global_min_iou 0.94:
# a second search, twice the cost); this one runs its 8 (0.957).
DEFAULT_GLOBAL_LR_SCALE = 0.2
DEFAULT_GLOBAL_PATIENCE = 3
DEFAULT_GLOBAL_REL_TOL = 1e-3


def global_refine_config(config, lr_scale: float = DEFAULT_GLOBAL_LR_SCALE, patience: int = DEFAULT_GLOBAL_PATIENCE,
                         rel_tol: float = DEFAULT_GLOBAL_REL_TOL):
    """The :class:`hp_ros.core.refine.RefineConfig` of the refinement after a global estimate, from the
    refiner's ``config``: Adam's steps scaled by ``lr_scale``; early stopping after ``patience``
    iterations without a relative improvement of ``rel_tol`` (``patience`` 0: the refiner's); the
    coarse search's best candidates only scored at the RoI's resolution, without Adam iterations each
    (their starts are depth fits already)."""
    from dataclasses import replace

    out = replace(config, lr_translation=config.lr_translation * lr_scale, lr_rotation=config.lr_rotation * lr_scale,
                  top_k_iterations=0)
    if patience > 0:
        out = replace(out, early_stop_patience=int(patience), early_stop_rel_tol=float(rel_tol))
    return out


@dataclass
class AnswerCheck:
    """What a refined global answer must show before it is given out (:func:`cold_start`): its mask
    IoU at the camera's resolution (a box turned a quarter about one axis covers a tenth of the mask
    wrongly: 0.88 against 0.98) and the hand's deepest point inside it (the object is between the
    fingers, not through them). A rejected answer's basin is excluded and the search run again, up to
    ``attempts`` searches in all; the answer that fits best of them is returned."""

    min_mask_iou: float = 0.94
    max_penetration_mm: float = 3.0
    attempts: int = 3

    def problem(self, res) -> Optional[str]:
        """Why the :class:`hp_ros.core.refine.RefineResult` ``res`` is rejected (its last frame), or None."""
        iou, pen = float(res.mask_iou[-1]), float(res.max_penetration_mm[-1])
        if not iou >= self.min_mask_iou:  # NaN (no mask) fails too
            return f"mask IoU {iou:.3f} < {self.min_mask_iou}"
        if pen > self.max_penetration_mm:
            return f"the hand {pen:.1f} mm inside the object (> {self.max_penetration_mm} mm)"
        return None

    @staticmethod
    def fit(res) -> float:
        """Higher is better: the mask IoU, less 1 per 10 mm of penetration."""
        iou = float(res.mask_iou[-1])
        return (iou if math.isfinite(iou) else 0.0) - 0.1 * float(res.max_penetration_mm[-1])


def cold_start(refiner, search: "GlobalPoseSearch", frame, camera,
               max_iterations: Optional[int] = DEFAULT_GLOBAL_ITERATIONS,
               num_hypotheses: int = DEFAULT_GLOBAL_HYPOTHESES, terms=None, check: Optional[AnswerCheck] = None,
               lr_scale: float = DEFAULT_GLOBAL_LR_SCALE, patience: int = DEFAULT_GLOBAL_PATIENCE):
    """Pose of one frame without an initial pose: :meth:`GlobalPoseSearch.estimate` (with the hand's
    surface points when the frame has joints and camera->hand and the refiner a hand model), then
    :meth:`hp_ros.core.refine.Refiner.refine` from its best candidate with all of its candidates in
    the coarse search (the colours decide between poses depth and mask cannot tell apart), then
    ``check`` (default :class:`AnswerCheck`): a rejected answer's basin
    (:meth:`GlobalPoseSearch.basin`) is excluded and the search run again; the best-fitting answer
    of the searches is returned, its ``GlobalPoseResult.attempts`` lists each search's problem (None:
    accepted).

    Args:
        refiner: :class:`hp_ros.core.refine.Refiner`; frame: :class:`hp_ros.core.refine.FrameObservation`
            with ``depth`` and ``object_mask``, or a window of them (oldest first: the estimate is of
            the last, the refinement of all); camera: :class:`hp_ros.core.camera.Camera`.
        max_iterations: Adam iterations of the refinement (None: the refiner's ``config.max_iterations``);
        num_hypotheses: poses around the estimate's best scored with its candidates.
        lr_scale, patience: the refinement's step scale and early-stopping patience
            (:func:`global_refine_config`).
    Returns:
        ``(RefineResult, GlobalPoseResult)``; ``(None, None)`` when the mask has too few depth pixels.
    Raises:
        ValueError when the frame has no depth or no object mask.
    """
    frames = list(frame) if isinstance(frame, (list, tuple)) else [frame]
    check = check or AnswerCheck()
    best, excluded, attempts = None, [], []
    config = global_refine_config(refiner.config, lr_scale, patience)
    for _ in range(max(1, int(check.attempts))):
        found = global_estimate(refiner, search, frames[-1], camera,
                                exclude=np.concatenate(excluded) if excluded else None)
        if found is None:
            break  # too few depth pixels, or every candidate in a rejected basin
        res = refiner.refine(frames, camera, torch.as_tensor(found.T_cam_obj, dtype=torch.float32),
                             max_iterations=max_iterations, num_hypotheses=num_hypotheses, terms=terms,
                             candidates=found.candidates, config=config)
        problem = check.problem(res)
        attempts.append(problem)
        if best is None or check.fit(res) > check.fit(best[0]):
            best = (res, found)
        if problem is None:
            break
        excluded.append(search.basin(res.T_cam_obj[-1].double().numpy()))
    if best is None:
        return None, None
    best[1].attempts = attempts
    return best


def warm_up_cold_start(refiner, search: "GlobalPoseSearch", width: int = 640, height: int = 480,
                       K: Optional[np.ndarray] = None, iterations: int = 2) -> None:
    """One cold start on a made-up frame - the object 0.5 m in front of a ``width`` x ``height``
    camera (intrinsics ``K`` ``(3, 3)``, default a RealSense-like field of view), the hand open
    behind it - so that what a process builds on first use (the depth fit's kernels and tables, mesh
    topologies, the SDF, torch's and numpy's first calls: a first cold start in a process took
    ~0.04-0.1 s more CPU than the next, cProfile of both) is built at start-up, not in the first
    request (a cold start's, the one a waiting tracker needs soonest). The result is discarded."""
    from hp_ros.core.camera import Camera
    from hp_ros.core.refine import FrameObservation

    f = 0.9 * width
    K = np.array([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]]) if K is None else np.asarray(K, float)
    T_obj = np.eye(4)
    T_obj[2, 3] = 0.5
    depth = search._masker_for(K, width, height).render(T_obj, (0, 0, width, height))
    mask = np.isfinite(depth)
    depth = np.where(mask, depth, 0.0).astype(np.float32)
    T_hand, q = None, None
    if refiner.hand is not None:
        T_hand = np.eye(4)
        T_hand[2, 3] = 0.65
        q = np.zeros(refiner.hand.num_joints)
    frame = FrameObservation(rgb=np.zeros((height, width, 3), np.uint8), object_mask=mask,
                             hand_mask=np.zeros_like(mask), depth=depth, q=q, T_cam_hand=T_hand)
    camera = Camera(torch.as_tensor(K, dtype=torch.float32), width, height)
    cold_start(refiner, search, frame, camera, max_iterations=iterations, check=AnswerCheck(attempts=1))


def global_estimate(refiner, search: "GlobalPoseSearch", frame, camera,
                    exclude: Optional[np.ndarray] = None) -> Optional[GlobalPoseResult]:
    """:meth:`GlobalPoseSearch.estimate` on a :class:`hp_ros.core.refine.FrameObservation` (its depth,
    masks, and the hand's surface points from its joints and camera->hand with the refiner's hand
    model; ``exclude``: rotations left out, see :meth:`GlobalPoseSearch.estimate`). None when the mask has
    too few depth pixels; ValueError without depth or object mask."""
    if frame.depth is None or frame.object_mask is None:
        raise ValueError("a global estimate needs the frame's depth and object mask")
    depth = np.asarray(frame.depth, np.float32)
    mask = np.asarray(frame.object_mask)
    mask = mask > (127 if mask.dtype == np.uint8 and mask.max() > 1 else 0)
    hand_mask = None
    if frame.hand_mask is not None:
        hm = np.asarray(frame.hand_mask)
        hand_mask = hm > (127 if hm.dtype == np.uint8 and hm.max() > 1 else 0)
    hand_points = None
    if refiner.hand is not None and frame.q is not None and frame.T_cam_hand is not None:
        with torch.no_grad():
            q = torch.as_tensor(np.asarray(frame.q), dtype=torch.float32).reshape(1, -1)
            Th = torch.as_tensor(np.asarray(frame.T_cam_hand), dtype=torch.float32).reshape(1, 4, 4)
            hand_points = refiner.hand.surface_points(q.to(refiner.device), Th.to(refiner.device))[0].cpu().numpy()
    K = camera.K.double().cpu().numpy()
    return search.estimate(depth, mask, K, hand_mask=hand_mask, hand_points=hand_points, exclude=exclude)
