"""The object-backend interface: what :class:`~hp_ros.core.segmentation.segmenter.Segmenter` hands
every object backend (:class:`BackendSetup` once, a :class:`Frame` per image) and what it gets back
(:class:`BackendMask`).

A backend is a subclass of :class:`ObjectBackend` with one required method,
:meth:`ObjectBackend.object_mask`. Adding one = a module holding the subclass plus one line in
``OBJECT_BACKENDS`` (:mod:`hp_ros.core.segmentation.registry`); its name is then accepted by
``object_backend`` (alone, or two joined by ``+`` / ``|``) in
:class:`~hp_ros.core.segmentation.segmenter.SegmenterConfig` and the segmentation node's parameter.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar, Optional

import cv2
import numpy as np

if TYPE_CHECKING:  # annotations only (segmenter imports the backends)
    from hp_ros.core.segmentation.depth import DepthBoxForeground
    from hp_ros.core.segmentation.segmenter import SegmenterConfig

# where a backend's masks can lie (ObjectBackend.region); the Segmenter's working rectangle follows
WORKSPACE = "workspace"   # inside the projected workspace box
IMAGE = "image"           # anywhere in the image
LOCATED = "located"       # inside the rectangle its locate() returns for the frame (nowhere without one)


@dataclass
class BackendSetup:
    """What a backend is built from (:meth:`ObjectBackend.create`), once per camera.

    K: ``(3, 3)`` intrinsics; ``width``, ``height``: image size.
    config: the :class:`~hp_ros.core.segmentation.segmenter.SegmenterConfig` (already validated).
    box: the workspace box (:class:`~hp_ros.core.segmentation.depth.DepthBoxForeground`), shared
        with the Segmenter, whose working rectangle is its projection.
    object_model: :class:`hp_ros.core.objects.ObjectModel` or None.
    detectron2: a :class:`~hp_ros.core.segmentation.detectron2.Detectron2Backend` built by the
        caller (it needs model files) or None.
    """

    K: np.ndarray
    width: int
    height: int
    config: "SegmenterConfig"
    box: "DepthBoxForeground"
    object_model: Any = None
    detectron2: Any = None


@dataclass
class Frame:
    """One image as the object backends see it (built by ``Segmenter.segment``).

    rgb: ``(H, W, 3)`` uint8 RGB. depth_m: ``(H, W)`` float32 metres (0 = invalid) or None.
    T_cam_hand: ``(4, 4)`` camera->hand after depth alignment, or None (no joint states / TF).
    hand_mask: ``(H, W)`` bool visible hand; hand_roi: ``(x0, y0, x1, y1)`` rectangle holding it
        (None without a hand render).
    external_mask: ``(H, W)`` mask from another detector or None.
    T_cam_obj_prior: ``(4, 4)`` object pose prior or None; prior_pos_sigma: its position sigma (m) or None.
    rect: the working rectangle ``(x0, y0, x1, y1)`` (exclusive ends), set by the Segmenter after
        every backend's :meth:`ObjectBackend.locate`; masks are crops of it.
    """

    rgb: np.ndarray
    depth_m: Optional[np.ndarray]
    T_cam_hand: Optional[np.ndarray]
    hand_mask: np.ndarray
    hand_roi: Optional[tuple] = None
    external_mask: Optional[np.ndarray] = None
    T_cam_obj_prior: Optional[np.ndarray] = None
    prior_pos_sigma: Optional[float] = None
    rect: tuple = (0, 0, 0, 0)

    @property
    def sl(self) -> tuple[slice, slice]:
        """Index of the working rectangle: ``image[frame.sl]`` is its crop."""
        x0, y0, x1, y1 = self.rect
        return slice(y0, y1), slice(x0, x1)

    @property
    def empty(self) -> bool:
        """The working rectangle holds no pixel."""
        x0, y0, x1, y1 = self.rect
        return x0 >= x1 or y0 >= y1

    @cached_property
    def hsv(self) -> np.ndarray:
        """``(y1 - y0, x1 - x0, 3)`` uint8 HSV (``cv2.COLOR_RGB2HSV``) of the working rectangle,
        converted on first use (only after ``rect`` is set)."""
        return cv2.cvtColor(np.ascontiguousarray(self.rgb[self.sl]), cv2.COLOR_RGB2HSV)


@dataclass
class BackendMask:
    """A backend's answer for one frame.

    mask: ``(y1 - y0, x1 - x0)`` bool object pixels in the frame's working rectangle; None = no
        mask this frame (an input missing: the Segmenter halves the confidence).
    confidence: factor in (0, 1] on the object confidence (a detector's score, a fit's depth
        agreement); None = no factor.
    extras: entries added to ``SegmentationResult.raw`` (debugging only: nothing reads them).
    pose: a depth fit's ``T_cam_obj`` ``(4, 4)`` (None: no fit), with ``pose_covariance`` ``(6, 6)``
        (None: the fitter gave none) and ``pose_confidence`` (its depth agreement): they go into
        the frame's :class:`~hp_ros.core.observation.ObjectObservation`.
    """

    mask: Optional[np.ndarray] = None
    confidence: Optional[float] = None
    extras: dict = field(default_factory=dict)
    pose: Optional[np.ndarray] = None
    pose_covariance: Optional[np.ndarray] = None
    pose_confidence: float = 0.0


class ObjectBackend(ABC):
    """One source of object masks. Subclasses set ``name`` (the registry key) and ``region``,
    and implement :meth:`object_mask`; :meth:`create`, :meth:`locate` and :meth:`feedback` have
    defaults that do nothing special."""

    name: ClassVar[str] = ""
    # WORKSPACE, IMAGE or LOCATED (an instance may set it from its configuration)
    region: str = IMAGE

    @classmethod
    def create(cls, setup: BackendSetup) -> "ObjectBackend":
        """The backend for one camera (default: ``cls(setup)``); ValueError for settings that
        cannot work."""
        return cls(setup)

    def locate(self, frame: Frame) -> Optional[tuple]:
        """Called before the working rectangle is fixed (``frame.rect`` not set yet): the
        rectangle ``(x0, y0, x1, y1)`` this frame's mask will lie in, joined into the working
        rectangle; None = nothing this frame. Only LOCATED backends need it."""
        return None

    @abstractmethod
    def object_mask(self, frame: Frame) -> BackendMask:
        """The object mask in ``frame.rect`` (and extras) for one frame."""

    def feedback(self, frame: Frame, own: BackendMask, object_mask: np.ndarray, confidence: float,
                 confirmed: bool) -> None:
        """After the frame: ``own`` = this backend's answer, ``object_mask`` = the combined, cleaned
        mask (crop of ``frame.rect``), ``confidence`` its confidence, ``confirmed`` = two backends
        gave masks. For backends that learn (the colour histogram); default: nothing."""
