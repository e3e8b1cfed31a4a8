"""Segmentation (ROS-free): hand mask from the robot's own model, object mask from pluggable
backends, clean-up, confidences, object observations and coloured-fingertip-marker detection.

Conventions (docs/ARCHITECTURE.md): images ``H x W``, pixel centres at integer coordinates;
camera frame REP-103 optical; masks are ``(H, W)`` bool; colour images are ``(H, W, 3)`` uint8
**RGB**; depth is ``(H, W)`` float32 metres with 0 (or NaN) = invalid (:func:`depth_to_metres`
converts 16UC1 millimetres / 32FC1 metres).

One module per concern:

- :mod:`.image`: encodings -> arrays, the overlay, pixel-grid helpers.
- :mod:`.hand`: hand silhouette + z-buffer (:class:`HandMasker`), camera->hand alignment against
  depth (:class:`HandAligner`), the visible hand (:func:`visible_hand_mask`).
- :mod:`.backend`: the object-backend interface (:class:`ObjectBackend`, :class:`Frame`,
  :class:`BackendMask`); :mod:`.registry`: the backends by name (:data:`OBJECT_BACKENDS`) and
  :func:`parse_combination`.
- Backends, one module each: :mod:`.color` (HSV / histogram / object-model colour models),
  :mod:`.depth` (workspace box), :mod:`.model` (object model at a pose prior refined against
  depth), :mod:`.external` (a mask from elsewhere), :mod:`.detectron2`.
- :mod:`.components`: connected-component clean-up with the object-size check.
- :mod:`.observation`: centroid, box, depth and centre of the object mask.
- :mod:`.markers`: coloured fingertip markers.
- :mod:`.segmenter`: :class:`Segmenter`, which combines all of them per frame.

Every name is re-exported here: ``from hp_ros.core.segmentation import X`` works for all of them.
"""
from __future__ import annotations

from hp_ros.core.segmentation.backend import (IMAGE, LOCATED, WORKSPACE, BackendMask, BackendSetup, Frame,
                                              ObjectBackend)
from hp_ros.core.segmentation.color import (ColorBackend, HistogramColorModel, HSVColorModel, check_color_settings,
                                            object_surface_colors)
from hp_ros.core.segmentation.components import CleanResult, clean_mask, extent_3d
from hp_ros.core.segmentation.depth import DepthBackend, DepthBoxForeground
from hp_ros.core.segmentation.detectron2 import Detectron2Backend
from hp_ros.core.segmentation.external import ExternalBackend
from hp_ros.core.segmentation.hand import (HOLE_OCCLUDER_PX, HOLE_RIM_PX, HandAligner, HandMasker, HandRender,
                                           visible_hand_mask)
from hp_ros.core.segmentation.image import COLOR_ENCODINGS, DEPTH_ENCODINGS, depth_to_metres, overlay, to_rgb
from hp_ros.core.segmentation.markers import FingertipMarkerDetector, FingertipResult
from hp_ros.core.segmentation.model import ModelBackend, ModelFit, ModelObjectMasker, icp_pose_covariance
from hp_ros.core.segmentation.observation import ObjectObservation, object_observation
from hp_ros.core.segmentation.registry import OBJECT_BACKENDS, parse_combination
from hp_ros.core.segmentation.segmenter import SegmentationResult, Segmenter, SegmenterConfig

__all__ = [
    # images in and out
    "to_rgb", "depth_to_metres", "overlay", "COLOR_ENCODINGS", "DEPTH_ENCODINGS",
    # hand
    "HandRender", "HandMasker", "visible_hand_mask", "HandAligner", "HOLE_RIM_PX", "HOLE_OCCLUDER_PX",
    # the object-backend interface and registry
    "ObjectBackend", "Frame", "BackendMask", "BackendSetup", "WORKSPACE", "IMAGE", "LOCATED",
    "OBJECT_BACKENDS", "parse_combination",
    # backends and their models
    "ColorBackend", "HSVColorModel", "HistogramColorModel", "object_surface_colors", "check_color_settings",
    "DepthBackend", "DepthBoxForeground", "ExternalBackend", "Detectron2Backend",
    "ModelBackend", "ModelObjectMasker", "ModelFit", "icp_pose_covariance",
    # clean-up, observation, markers, the combinator
    "clean_mask", "extent_3d", "CleanResult", "ObjectObservation", "object_observation",
    "FingertipMarkerDetector", "FingertipResult", "SegmenterConfig", "SegmentationResult", "Segmenter",
]
