"""The :class:`Segmenter`: one frame's hand mask, object mask from the configured backends,
clean-up, observation and fingertip markers.

Pipeline of :meth:`Segmenter.segment`:

1. Hand (:mod:`~hp_ros.core.segmentation.hand`): align the camera->hand transform to depth,
   render the hand, keep what depth confirms.
2. Object: each configured backend (:data:`~hp_ros.core.segmentation.registry.OBJECT_BACKENDS`,
   one or two joined by ``+`` = intersection or ``|`` = union) gives a mask inside the working
   rectangle (the projected workspace box, joined with the rectangles LOCATED backends report);
   minus the visible hand, combined (in a union, colour pixels whose valid depth lies outside the
   workspace are dropped: colour only fills depth holes), then cleaned
   (:func:`~hp_ros.core.segmentation.components.clean_mask`, with the object-size check).
3. Observation (:func:`~hp_ros.core.segmentation.observation.object_observation`) and fingertip
   markers (:class:`~hp_ros.core.segmentation.markers.FingertipMarkerDetector`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import cv2
import numpy as np

from hp_ros.core.segmentation.backend import LOCATED, WORKSPACE, BackendMask, BackendSetup, Frame, ObjectBackend
from hp_ros.core.segmentation.color import check_color_settings
from hp_ros.core.segmentation.components import clean_mask
from hp_ros.core.segmentation.depth import DepthBoxForeground
from hp_ros.core.segmentation.detectron2 import Detectron2Backend
from hp_ros.core.segmentation.hand import HandAligner, HandMasker, visible_hand_mask
from hp_ros.core.segmentation.image import _check_K, _disk
from hp_ros.core.segmentation.markers import FingertipMarkerDetector, FingertipResult
from hp_ros.core.segmentation.model import _check_model_settings
from hp_ros.core.segmentation.observation import ObjectObservation, object_observation
from hp_ros.core.segmentation.registry import OBJECT_BACKENDS, parse_combination


@dataclass
class SegmenterConfig:
    """Settings of :class:`Segmenter` (the node's parameters of the same names)."""

    object_backend: str = "color|depth"     # names in registry.OBJECT_BACKENDS, one or two joined by + (and) / | (or)
    # used instead of object_backend in a frame where a backend of it needs a pose prior or depth the
    # frame lacks (the model backend before the tracker's first pose and after LOST); "" = none
    fallback_backend: str = ""
    color_model: str = "hsv"                 # hsv | histogram (learned from the first confident mask)
    #                                          | object (histogram from the object model's texture/colours)
    object_size: float = 0.0                 # m, expected 3D extent of the object component (0 = no
    #                                          check; < 0 = the object model's diameter)
    object_size_tolerance: float = 2.0       # components more than this factor off that size are rejected
    hsv_ranges: Sequence[float] = (0, 120, 70, 10, 255, 255, 170, 120, 70, 180, 255, 255)
    histogram_threshold: float = 0.5
    histogram_rate: float = 0.05
    histogram_learn_confidence: float = 0.7
    workspace_box: Sequence[float] = (-0.05, -0.12, 0.0, 0.20, 0.12, 0.25)
    workspace_frame: str = "hand"            # hand | camera
    color_in_workspace: bool = True          # colour search limited to the projected workspace box
    hand_dilate_px: int = 0
    hand_depth_tolerance: float = 0.02       # measured depth this far behind the hand = background
    hand_occluder_tolerance: float = 0.006   # this far in front of the hand = occluder (the object)
    hand_align_iterations: int = 2           # ICP steps per frame correcting camera->hand (0 = off)
    hand_align_every: int = 3                # ... on every n-th frame (the correction is held between)
    hand_depth_scale: float = 0.5            # resolution factor of the hand depth raster
    hand_margin_px: int = 2                  # extra ring around the visible hand removed from the object
    min_area: int = 100
    open_px: int = 1
    close_px: int = 2
    fill_holes: bool = True
    keep: str = "largest"
    marker_colors: Sequence[float] = ()      # 12 numbers (4 RGB) or empty = no marker detection
    marker_hue_tolerance: int = 10
    marker_min_saturation: int = 100
    marker_min_value: int = 60
    marker_window_px: int = 40
    marker_radius: float = 0.0144           # synthetic default (fingertip size); set for your markers
    # model backend: the object model at a pose prior (the tracker's estimate), refined against depth
    model_margin: float = 0.02               # m, search margin around the prior (>= 3 x prior_pos_sigma is used)
    model_max_margin: float = 0.04           # m, largest search margin (bounds the signed-distance grid)
    model_tolerance: float = 0.006           # m, depth within this of the refined model's surface = object
    model_icp_iterations: int = 8            # robust ICP steps per frame (0 = coarse search only)
    model_scale: float = 0.5                 # working resolution of the fit and the rendered silhouette
    model_dilate_px: int = 2                 # silhouette growth absorbing the remaining pose error
    model_device: str = "cpu"                # torch + Warp device of the fit's SDF grid and silhouette render


@dataclass
class SegmentationResult:
    """One frame: masks ``(H, W)`` bool, confidences, observation and fingertips."""

    hand_mask: np.ndarray
    object_mask: np.ndarray
    hand_confidence: float
    object_confidence: float
    observation: ObjectObservation
    fingertips: Optional[FingertipResult]
    raw: dict = field(default_factory=dict)  # per-backend masks before combination (debugging only)
    T_cam_hand: Optional[np.ndarray] = None  # camera->hand used (after depth alignment)
    hand_aligned: bool = False  # T_cam_hand is the given one aligned to this frame's depth (HandAligner)


def combine_masks(present: list, op: str, shape: tuple) -> tuple:
    """The backends' masks ``present`` (each ``shape`` bool) combined by :func:`parse_combination`'s
    operator: ``"+"`` intersection, ``"|"`` union (one mask: itself; none: empty). Returns
    ``(mask, agreement)``: agreement = intersection over union of all of them when two or more
    gave masks (None otherwise)."""
    if not present:
        return np.zeros(shape, bool), None
    if len(present) == 1:
        return present[0], None
    inter, union = np.logical_and.reduce(present), np.logical_or.reduce(present)
    n_union = np.count_nonzero(union)
    agreement = np.count_nonzero(inter) / n_union if n_union else 0.0
    return (inter if op == "+" else union), agreement


class _BackendSet:
    """One object-backend combination: its spec, names, operator and backend objects; confidence
    factors multiply in registry order (``factor_order``): "a|b" and "b|a" rate a frame alike."""

    def __init__(self, spec: str, names: list, op: str, backends: list):
        self.spec, self.names, self.op, self.backends = spec, list(names), op, list(backends)
        order = list(OBJECT_BACKENDS)
        self.factor_order = sorted(range(len(names)), key=lambda i: order.index(names[i]))


class Segmenter:
    """Per-frame segmentation for one camera (``K``, ``width`` x ``height``) and one hand."""

    def __init__(self, K, width: int, height: int, hand=None, config: Optional[SegmenterConfig] = None,
                 detectron2: Optional[Detectron2Backend] = None, object_model=None):
        self.K = _check_K(K)
        self.width, self.height = int(width), int(height)
        self.cfg = cfg = config or SegmenterConfig()
        self.backends, self.op = parse_combination(cfg.object_backend)
        if cfg.color_model not in ("hsv", "histogram", "object"):
            raise ValueError(f"color_model must be 'hsv', 'histogram' or 'object', got {cfg.color_model!r}")
        if (cfg.color_model == "object" or cfg.object_size < 0) and object_model is None:
            raise ValueError("color_model='object' and object_size < 0 need the object model (object_model=...)")
        self.object_size = float(object_model.diameter) if cfg.object_size < 0 else float(cfg.object_size)
        if not cfg.object_size_tolerance >= 1:
            raise ValueError(f"object_size_tolerance must be >= 1, got {cfg.object_size_tolerance}")
        if cfg.keep not in ("largest", "near_prior"):
            raise ValueError(f"keep must be 'largest' or 'near_prior', got {cfg.keep!r}")
        check_color_settings(cfg)
        self.box = DepthBoxForeground(self.K, width, height, cfg.workspace_box, cfg.workspace_frame)
        self.hand_masker = HandMasker(hand, self.K, width, height, depth_scale=cfg.hand_depth_scale,
                                      marker_radius=cfg.marker_radius
                                      if len(cfg.marker_colors) else 0.0) if hand is not None else None
        mr = cfg.marker_radius if len(cfg.marker_colors) else 0.0
        self.aligner = HandAligner(hand, self.K, width, height, cfg.hand_align_iterations, marker_radius=mr,
                                   every=cfg.hand_align_every) \
            if hand is not None and cfg.hand_align_iterations > 0 else None
        self._last_render = None
        self.markers = None
        if len(cfg.marker_colors):
            self.markers = FingertipMarkerDetector(
                np.asarray(cfg.marker_colors, dtype=np.float64).reshape(-1, 3), cfg.marker_hue_tolerance,
                cfg.marker_min_saturation, cfg.marker_min_value, cfg.marker_window_px, cfg.marker_radius)
        _check_model_settings(cfg.model_margin, cfg.model_tolerance, cfg.model_max_margin, cfg.model_icp_iterations,
                              cfg.model_scale, cfg.model_dilate_px)
        setup = BackendSetup(self.K, self.width, self.height, cfg, self.box, object_model, detectron2)
        # the configured object backends, in the order of object_backend (and of fallback_backend)
        self.object_backends: list[ObjectBackend] = [OBJECT_BACKENDS[n].create(setup) for n in self.backends]
        self._primary = _BackendSet(cfg.object_backend, self.backends, self.op, self.object_backends)
        self._fallback = None
        if cfg.fallback_backend:
            names, op = parse_combination(cfg.fallback_backend)
            if "model" in names:
                raise ValueError("fallback_backend cannot use the model backend (it is what falls back)")
            self._fallback = _BackendSet(cfg.fallback_backend, names, op,
                                         [OBJECT_BACKENDS[n].create(setup) for n in names])
        self.active_backend = cfg.object_backend  # the set used in the last frame (object_backend or the fallback)

    # ------------------------------------------------------------------ backends by name
    def backend(self, name: str) -> Optional[ObjectBackend]:
        """The configured object backend of that name (object_backend first, then the fallback), or None."""
        for bs in (self._primary, self._fallback):
            if bs is not None and name in bs.names:
                return bs.backends[bs.names.index(name)]
        return None

    def _backends_for(self, frame: Frame) -> "_BackendSet":
        """object_backend, or the fallback in a frame without the prior / depth the model backend needs."""
        if self._fallback is not None and "model" in self._primary.names and (
                frame.T_cam_obj_prior is None or frame.depth_m is None):
            return self._fallback
        return self._primary

    @property
    def model_masker(self):
        """The model backend's :class:`~hp_ros.core.segmentation.model.ModelObjectMasker` (None
        without that backend)."""
        b = self.backend("model")
        return None if b is None else b.masker

    @property
    def hsv_model(self):
        """The colour backend's HSV model (None without it or without HSV ranges)."""
        b = self.backend("color")
        return None if b is None else b.hsv_model

    @property
    def hist_model(self):
        """The colour backend's histogram model (None without it or with ``color_model=hsv``)."""
        b = self.backend("color")
        return None if b is None else b.hist_model

    @property
    def detectron2(self):
        return self.backend("detectron2")

    # ------------------------------------------------------------------ pieces
    def _object_rect(self, T_cam_hand, located: Sequence[tuple] = (), backends=None) -> tuple[int, int, int, int]:
        """Image rectangle the object masks can live in: the projected workspace box when every
        backend is bounded by it (depth; colour with ``color_in_workspace``), else the image;
        joined with the rectangles ``located`` by LOCATED backends (the model backend's fit)."""
        cfg = self.cfg
        others = [b for b in (self.object_backends if backends is None else backends) if b.region != LOCATED]
        rect = None
        if others:
            bounded = all(b.region == WORKSPACE for b in others)
            if bounded and (cfg.workspace_frame == "camera" or T_cam_hand is not None):
                rect = self.box.project_box(T_cam_hand) or (0, 0, 0, 0)
            else:
                rect = (0, 0, self.width, self.height)
        for r in located:
            if rect is None or rect[0] >= rect[2] or rect[1] >= rect[3]:
                rect = tuple(r)
            else:
                rect = (min(rect[0], r[0]), min(rect[1], r[1]), max(rect[2], r[2]), max(rect[3], r[3]))
        return rect or (0, 0, 0, 0)

    def segment(self, rgb: np.ndarray, depth_m: Optional[np.ndarray] = None, q: Optional[np.ndarray] = None,
                T_cam_hand: Optional[np.ndarray] = None, external_mask: Optional[np.ndarray] = None, *,
                T_cam_obj_prior: Optional[np.ndarray] = None,
                prior_pos_sigma: Optional[float] = None, markers: bool = True) -> SegmentationResult:
        """Segment one frame.

        Args:
            rgb: ``(H, W, 3)`` uint8 RGB (see :func:`~hp_ros.core.segmentation.image.to_rgb`).
            depth_m: ``(H, W)`` float32 metres aligned to ``rgb`` (0 = invalid) or None.
            q: ``(J,)`` joint angles in the hand model's order, and ``T_cam_hand`` ``(4, 4)``;
                without them there is no hand mask (and a hand-frame box cannot be used).
            external_mask: ``(H, W)`` mask from another detector (``external`` backend).
            T_cam_obj_prior: ``(4, 4)`` camera->object pose prior (``model`` backend: the tracker's
                current estimate or the initial pose); without it, or without depth, the model
                backend gives no mask this frame (confidence halved like any missing input).
            prior_pos_sigma: the prior's position uncertainty (m, e.g. the square root of the
                largest position variance of the tracker's covariance); widens the model search
                margin to ``3 sigma`` (between ``model_margin`` and ``model_max_margin``).
            markers: look for the fingertip markers (False: the fingertips' FK pixels only, for a
                caller whose consumers do not use them; ~1.5 ms of CPU per frame saved).

        Object work happens inside the workspace box's image rectangle (see
        :meth:`_object_rect`); ``raw`` masks in the result are that rectangle's crops
        (``raw["rect"]`` = ``(x0, y0, x1, y1)``; ``raw`` is for debugging, nothing depends on it).
        With the model backend the observation's ``pose`` is the prior refined against depth
        (``(4, 4)``, None without a fit), ``pose_confidence`` its depth agreement and
        ``pose_covariance`` its ``(6, 6)`` ICP covariance (:attr:`ModelFit.covariance`, None
        without one).
        """
        T_cam_obj_prior = self._check_inputs(rgb, depth_m, external_mask, T_cam_obj_prior, prior_pos_sigma)
        render, hand_mask, hand_conf, T_cam_hand, aligned = self._hand(depth_m, q, T_cam_hand)
        frame = Frame(rgb, depth_m, T_cam_hand, hand_mask, None if render is None else render.roi, external_mask,
                      T_cam_obj_prior, prior_pos_sigma)
        active = self._backends_for(frame)
        self.active_backend = active.spec
        answers, raw = self._backend_masks(frame, active)
        obj_c, conf, n_present = self._combined_object_mask(frame, active, answers, raw, render)
        sl = frame.sl
        # the object in front of the fingers is not hand
        if "color" in raw and obj_c.any():
            hand_mask[sl] &= ~(obj_c & raw["color"])
        for backend, a in zip(active.backends, answers):
            backend.feedback(frame, a, obj_c, conf, n_present >= 2)
        object_mask = np.zeros((self.height, self.width), bool)
        object_mask[sl] = obj_c
        obs = self._observation(frame, active.spec, answers, obj_c, conf)
        return SegmentationResult(hand_mask, object_mask, hand_conf if render is not None else 0.0, conf,
                                  obs, self._fingertips(rgb, render, markers), raw, T_cam_hand, aligned)

    # ------------------------------------------------------------------ stages of segment()
    def _check_inputs(self, rgb, depth_m, external_mask, T_cam_obj_prior, prior_pos_sigma) -> Optional[np.ndarray]:
        """ValueError for inputs of :meth:`segment` that do not fit this camera; returns the prior
        as a ``(4, 4)`` float64 array (None without one)."""
        H, W = self.height, self.width
        if rgb.shape != (H, W, 3) or rgb.dtype != np.uint8:
            raise ValueError(f"rgb must be ({H}, {W}, 3) uint8, got {rgb.shape} {rgb.dtype}")
        if depth_m is not None and depth_m.shape != (H, W):
            raise ValueError(f"depth must be ({H}, {W}), got {depth_m.shape}")
        if external_mask is not None and external_mask.shape != (H, W):
            raise ValueError(f"external mask must be ({H}, {W}), got {external_mask.shape}")
        if T_cam_obj_prior is not None:
            T_cam_obj_prior = np.asarray(T_cam_obj_prior, dtype=np.float64)
            if T_cam_obj_prior.shape != (4, 4) or not np.isfinite(T_cam_obj_prior).all():
                raise ValueError(f"T_cam_obj_prior must be a finite (4, 4) pose, got {T_cam_obj_prior.shape}")
        if prior_pos_sigma is not None and not (np.isfinite(prior_pos_sigma) and prior_pos_sigma >= 0):
            raise ValueError(f"prior_pos_sigma must be a finite value >= 0 m, got {prior_pos_sigma}")
        return T_cam_obj_prior

    def _hand(self, depth_m, q, T_cam_hand) -> tuple:
        """Stage 1: align the camera->hand transform to depth, render the hand, keep what depth
        confirms. Returns ``(render or None, hand mask (H, W) bool, its confidence, T_cam_hand
        (4, 4) after the alignment, whether it was aligned)``; no render without a hand model,
        joints or transform."""
        cfg = self.cfg
        render, aligned = None, False
        hand_mask, hand_conf = np.zeros((self.height, self.width), bool), 0.0
        if self.hand_masker is not None and q is not None and T_cam_hand is not None:
            if depth_m is not None and self.aligner is not None:
                # self-occlusion from the previous frame's render (the hand moves little per frame)
                vis = self._last_render or self.hand_masker.render(q, self.aligner.correction @ T_cam_hand)
                T_cam_hand, aligned = self.aligner.update(q, T_cam_hand, depth_m, vis), True
            render = self._last_render = self.hand_masker.render(q, T_cam_hand)
            hand_mask, hand_conf = visible_hand_mask(render, cfg.hand_dilate_px, depth_m, cfg.hand_depth_tolerance,
                                                     occluder_tolerance=cfg.hand_occluder_tolerance)
        return render, hand_mask, hand_conf, T_cam_hand, aligned

    def _backend_masks(self, frame: Frame, active: "_BackendSet") -> tuple[list[BackendMask], dict]:
        """Stage 2a: the LOCATED backends' rectangles join the working rectangle (set as
        ``frame.rect``), then every backend's answer inside it. Returns ``(answers, raw)``: raw
        holds ``"rect"``, each answering backend's mask crop ``(h, w)`` bool by name and their extras."""
        located = [r for r in (b.locate(frame) for b in active.backends) if r is not None]
        frame.rect = self._object_rect(frame.T_cam_hand, located, active.backends)
        raw = {"rect": frame.rect}
        answers: list[BackendMask] = []
        for name, backend in zip(active.names, active.backends):
            a = backend.object_mask(frame)
            answers.append(a)
            raw.update(a.extras)
            if a.mask is not None:
                raw[name] = a.mask
        if active.op == "|" and "color" in raw and "depth" in raw:
            # union: a colour pixel whose valid depth lies outside the workspace is background of
            # the object's colour, not object (colour fills depth holes)
            raw["color"] = raw["color"] & (raw["depth"] | ~(frame.depth_m[frame.sl] > 0))
        return answers, raw

    def _combined_object_mask(self, frame: Frame, active: "_BackendSet", answers: list, raw: dict,
                              render) -> tuple[np.ndarray, float, int]:
        """Stage 2b: the backends' masks minus the visible hand (grown by ``hand_margin_px``),
        combined and cleaned. Returns ``(object mask crop (h, w) bool, confidence, number of
        backends that gave a mask)``; the confidence is the cleaning's times the backends'
        agreement, a missing input's halving and each backend's own factor."""
        cfg = self.cfg
        x0, y0 = frame.rect[:2]
        sl = frame.sl
        hand_c = frame.hand_mask[sl]
        hand_cut = hand_c
        if cfg.hand_margin_px > 0 and hand_c.any():
            hand_cut = cv2.dilate(hand_c.view(np.uint8), _disk(cfg.hand_margin_px)).astype(bool)
        present = [raw[n] & ~hand_cut for n, a in zip(active.names, answers) if a.mask is not None]
        obj, agreement = combine_masks(present, active.op, hand_c.shape)
        prior = None
        if render is not None:
            prior = np.nanmean(render.fingertips_uv, axis=0) - (x0, y0)
        points = None
        if self.object_size > 0 and frame.depth_m is not None and not frame.empty:
            d = frame.depth_m[sl]
            points = np.stack([self.box._rx[sl] * d, self.box._ry[sl] * d, d], -1)
        clean = clean_mask(obj, cfg.min_area, cfg.open_px, cfg.close_px, cfg.fill_holes, cfg.keep, prior,
                           points=points, expected_size=self.object_size or None,
                           size_tolerance=cfg.object_size_tolerance)
        conf = clean.confidence
        if agreement is not None:  # agreement between the backends that gave masks
            conf *= 0.5 + 0.5 * agreement
        if len(present) < len(active.names):
            conf *= 0.5  # a configured backend had no input this frame
        for i in active.factor_order:  # a detector's score, a fit's depth agreement
            if answers[i].confidence is not None:
                conf *= answers[i].confidence
        return clean.mask, conf, len(present)

    def _observation(self, frame: Frame, spec: str, answers: list, obj_c: np.ndarray, conf: float) -> ObjectObservation:
        """Stage 3: the observation of the object mask crop ``obj_c`` (confidence 0 when empty),
        with a depth fit's pose, covariance and confidence when a backend gave one."""
        x0, y0 = frame.rect[:2]
        obs = object_observation(obj_c, self.K, None if frame.depth_m is None else frame.depth_m[frame.sl], conf,
                                 spec, offset=(x0, y0))
        if not obj_c.any():
            obs.confidence = 0.0
        fit = next((a for a in answers if a.pose is not None), None)
        if fit is not None:  # a depth fit (the model backend): the tracker's rotation-bearing observation
            obs.pose, obs.pose_covariance, obs.pose_confidence = fit.pose, fit.pose_covariance, fit.pose_confidence
        return obs

    def _fingertips(self, rgb: np.ndarray, render, markers: bool = True) -> Optional[FingertipResult]:
        """Stage 3: fingertip markers around the rendered fingertips (their forward-kinematics
        pixels alone without marker colours or ``markers``); None without a hand render."""
        if render is None:
            return None
        if self.markers is not None and markers:
            return self.markers.detect(rgb, render.fingertips_uv, render.fingertips_z, float(self.K[0, 0]))
        return FingertipResult(np.full((4, 2), np.nan), np.zeros(4), render.fingertips_uv.copy())
