"""Colour models of the object and the ``color`` backend.

HSV ranges (:class:`HSVColorModel`), an H-S histogram back-projection learned from a first
confident mask (:class:`HistogramColorModel`), or one learned from the known object model's
texture/colours (:meth:`HistogramColorModel.from_object_model`). :class:`ColorBackend` applies
the configured model inside the working rectangle and keeps a histogram model learning.
"""
from __future__ import annotations

from typing import Optional, Sequence

import cv2
import numpy as np

from hp_ros.core.segmentation.backend import IMAGE, WORKSPACE, BackendMask, BackendSetup, Frame, ObjectBackend


def object_surface_colors(obj, n_samples: int = 20000, seed: int = 0) -> np.ndarray:
    """``(n_samples, 3)`` uint8 RGB colours of area-uniform samples of an object's surface.

    ``obj``: :class:`hp_ros.core.objects.ObjectModel` (uses ``trimesh``, ``uv``/``texture`` when
    present, else ``vertex_colors``). Texture look-up: nearest texel at the barycentric-
    interpolated UV (v up, as in :mod:`hp_ros.core.objects`)."""
    import trimesh

    mesh = obj.trimesh
    pts, fi = trimesh.sample.sample_surface(mesh, int(n_samples), seed=seed)
    tri = np.asarray(mesh.faces)[fi]
    bary = trimesh.triangles.points_to_barycentric(np.asarray(mesh.vertices)[tri], pts)
    uv = None if obj.uv is None else obj.uv.detach().cpu().numpy().astype(np.float64)
    tex = None if obj.texture is None else obj.texture.detach().cpu().numpy()
    if uv is not None and tex is not None:
        st = (uv[tri] * bary[:, :, None]).sum(1)
        th, tw = tex.shape[:2]
        u = np.clip(np.round((st[:, 0] % 1.0) * (tw - 1)), 0, tw - 1).astype(np.int64)
        v = np.clip(np.round((1.0 - st[:, 1] % 1.0) * (th - 1)), 0, th - 1).astype(np.int64)
        col = tex[v, u, :3]
    else:
        vc = obj.vertex_colors.detach().cpu().numpy().astype(np.float64)
        col = (vc[tri] * bary[:, :, None]).sum(1)
    return np.clip(np.round(np.asarray(col, np.float64) * 255.0), 0, 255).astype(np.uint8)


def _parse_hsv_ranges(ranges: Sequence[float]) -> np.ndarray:
    r = np.asarray(ranges, dtype=np.float64).reshape(-1)
    if r.size == 0 or r.size % 6:
        raise ValueError("HSV ranges need 6 numbers per range: h_min s_min v_min h_max s_max v_max "
                         f"(OpenCV units: H 0-180, S and V 0-255), got {r.size} numbers")
    r = r.reshape(-1, 6)
    if (r < 0).any() or (r[:, [0, 3]] > 180).any() or (r[:, [1, 2, 4, 5]] > 255).any():
        raise ValueError(f"HSV ranges out of bounds (H 0-180, S/V 0-255): {r.tolist()}")
    return r


class HSVColorModel:
    """Object = pixels inside any of several HSV boxes (OpenCV units: H 0-180, S, V 0-255).

    ``ranges``: flat list ``[h_min, s_min, v_min, h_max, s_max, v_max, ...]``; a range with
    ``h_min > h_max`` wraps around red (e.g. 170..10).
    """

    def __init__(self, ranges: Sequence[float]):
        self.ranges = _parse_hsv_ranges(ranges)

    def mask(self, hsv: np.ndarray) -> np.ndarray:
        """``hsv`` ``(H, W, 3)`` uint8 (``cv2.COLOR_RGB2HSV``) -> ``(H, W)`` bool."""
        out = np.zeros(hsv.shape[:2], np.uint8)
        for h0, s0, v0, h1, s1, v1 in self.ranges:
            spans = [(h0, h1)] if h0 <= h1 else [(h0, 180), (0, h1)]
            for a, b in spans:
                out |= cv2.inRange(hsv, (a, s0, v0), (b, s1, v1))
        return out > 0


class HistogramColorModel:
    """Hue-saturation histogram of the object, back-projected (``cv2.calcBackProject``).

    Learned from a first good mask (:meth:`learn`), then blended with each new confident mask at
    ``rate`` (slow update follows lighting changes without drifting onto the background). The
    histogram is the object's H-S histogram divided by the frame's (a likelihood ratio), so
    colours common in the background score low.
    """

    def __init__(self, h_bins: int = 30, s_bins: int = 32, threshold: float = 0.5, rate: float = 0.05,
                 min_value: int = 30):
        if not 0 < threshold <= 1 or not 0 <= rate <= 1:
            raise ValueError(f"threshold must be in (0, 1] and rate in [0, 1], got {threshold}, {rate}")
        self.bins = [int(h_bins), int(s_bins)]
        self.threshold, self.rate, self.min_value = float(threshold), float(rate), int(min_value)
        self.hist: Optional[np.ndarray] = None
        self.object_hist: Optional[np.ndarray] = None   # set by from_object_model()
        self.background_set = False

    @property
    def ready(self) -> bool:
        return self.hist is not None

    def _hist(self, hsv: np.ndarray, mask: Optional[np.ndarray]) -> np.ndarray:
        m = None if mask is None else mask.astype(np.uint8) * 255
        return cv2.calcHist([hsv], [0, 1], m, self.bins, [0, 180, 0, 256])

    @staticmethod
    def _ratio(obj: np.ndarray, background: np.ndarray) -> np.ndarray:
        """Object / background histogram ratio scaled so its 90th percentile over the object's
        bins is 1, clipped to [0, 1] (both histograms normalised here)."""
        obj = obj / max(float(obj.sum()), 1e-12)
        background = background / max(float(background.sum()), 1e-12)
        ratio = obj / (background + 1e-6)
        return np.minimum(ratio / max(np.percentile(ratio[obj > 0], 90), 1e-9), 1.0).astype(np.float32)

    def learn(self, hsv: np.ndarray, mask: np.ndarray) -> None:
        """Learn (first call) or blend in (later calls) the object histogram from ``mask``."""
        mask = mask & (hsv[..., 2] >= self.min_value)
        if not mask.any():
            return
        ratio = self._ratio(self._hist(hsv, mask), self._hist(hsv, None))
        self.hist = ratio if self.hist is None else (1 - self.rate) * self.hist + self.rate * ratio

    @classmethod
    def from_object_model(cls, obj, n_samples: int = 20000, hue_sigma_bins: float = 1.0, seed: int = 0,
                          background_hsv: Optional[np.ndarray] = None, **kwargs) -> "HistogramColorModel":
        """Colour model learned from the known object model instead of a first mask.

        The surface is sampled area-uniformly (``trimesh.sample.sample_surface``), each sample's
        colour is read from the texture at its barycentric-interpolated UV (or interpolated from
        the vertex colours when the model has no texture), so the histogram weights colours by
        how much surface they cover. The hue axis is blurred (circularly, ``hue_sigma_bins``) to
        tolerate the camera's colour rendition differing from the texture's. The background is
        ``background_hsv`` (e.g. the first frame; see :meth:`relative_to`) or uniform; the
        back-projected value is ``p_obj / (p_obj + p_image)``, which exceeds 1/2 exactly where
        the object's colour density exceeds the background's (equal priors), however much of
        the image the object covers.

        Args:
            obj: :class:`hp_ros.core.objects.ObjectModel`.
            kwargs: ``h_bins``, ``s_bins``, ``threshold``, ``rate``, ``min_value``.
        """
        from scipy.ndimage import gaussian_filter1d

        model = cls(**kwargs)
        rgb = object_surface_colors(obj, n_samples, seed)
        hsv = cv2.cvtColor(rgb[None], cv2.COLOR_RGB2HSV)
        keep = (hsv[0, :, 2] >= model.min_value).astype(np.uint8)[None] * 255
        h = cv2.calcHist([hsv], [0, 1], keep, model.bins, [0, 180, 0, 256])
        if hue_sigma_bins > 0:
            h = gaussian_filter1d(h, float(hue_sigma_bins), axis=0, mode="wrap")
        if not h.sum() > 0:
            raise ValueError(f"object model {getattr(obj, 'name', '')!r}: no surface colour brighter than "
                             f"min_value={model.min_value}")
        model.object_hist = h.astype(np.float32)
        model.relative_to(background_hsv)
        return model

    def relative_to(self, background_hsv: Optional[np.ndarray]) -> None:
        """Recompute the ratio histogram of a model-derived object histogram against the colours
        of ``background_hsv`` ``(H, W, 3)`` (None = uniform background)."""
        obj = self.object_hist
        if obj is None:
            raise RuntimeError("relative_to() needs a model built by from_object_model()")
        bg = np.ones_like(obj) if background_hsv is None else self._hist(background_hsv, None)
        p_obj = obj / max(float(obj.sum()), 1e-12)
        p_img = bg / max(float(bg.sum()), 1e-12)
        # p_obj / (p_obj + p_img) > 1/2  <=>  p_obj > p_img  <=>  p_obj > p_background whatever
        # share of the image the object covers: the equal-prior Bayes decision at threshold 0.5
        self.hist = (p_obj / (p_obj + p_img + 1e-12)).astype(np.float32)
        self.background_set = background_hsv is not None

    def mask(self, hsv: np.ndarray) -> np.ndarray:
        if self.hist is None:
            raise RuntimeError("histogram colour model not learned yet: call learn() with a good mask")
        bp = cv2.calcBackProject([hsv], [0, 1], (self.hist * 255).astype(np.float32), [0, 180, 0, 256], 1)
        return (bp >= 255 * self.threshold) & (hsv[..., 2] >= self.min_value)


def check_color_settings(cfg) -> None:
    """ValueError for colour settings that cannot work (checked whichever backends are chosen)."""
    if len(cfg.hsv_ranges):
        _parse_hsv_ranges(cfg.hsv_ranges)
    if cfg.color_model in ("histogram", "object"):
        HistogramColorModel(threshold=cfg.histogram_threshold, rate=cfg.histogram_rate)


class ColorBackend(ObjectBackend):
    """``color``: the configured colour model (``color_model``: ``hsv``, ``histogram`` bootstrapped
    by the HSV ranges when set, ``object``) inside the working rectangle.

    The histogram model learns from confident object masks (``histogram_learn_confidence``);
    once learned, only from masks a second backend confirmed (it would otherwise reinforce its
    own mistakes). A model-derived histogram (``object``) takes the first frame's colours as
    its background.
    """

    name = "color"

    def __init__(self, setup: BackendSetup):
        cfg = setup.config
        self.region = WORKSPACE if cfg.color_in_workspace else IMAGE
        self.learn_confidence = float(cfg.histogram_learn_confidence)
        self.hsv_model = HSVColorModel(cfg.hsv_ranges) if len(cfg.hsv_ranges) else None
        self.hist_model = HistogramColorModel(threshold=cfg.histogram_threshold, rate=cfg.histogram_rate) \
            if cfg.color_model == "histogram" else None
        if cfg.color_model == "object":  # model-derived; the first frame becomes its background
            self.hist_model = HistogramColorModel.from_object_model(
                setup.object_model, threshold=cfg.histogram_threshold, rate=cfg.histogram_rate)
        if self.hsv_model is None and self.hist_model is None:
            raise ValueError("the color backend needs hsv_ranges or color_model=histogram")

    def _mask(self, hsv: np.ndarray) -> Optional[np.ndarray]:
        if self.hist_model is not None and self.hist_model.ready:
            return self.hist_model.mask(hsv)
        if self.hsv_model is not None:
            return self.hsv_model.mask(hsv)
        return None  # histogram not learned yet and no HSV bootstrap

    def object_mask(self, frame: Frame) -> BackendMask:
        if frame.empty:
            return BackendMask()
        hm = self.hist_model
        if hm is not None and hm.object_hist is not None and not hm.background_set:
            # object vs the colours of the whole scene (not the working crop the object may fill)
            hm.relative_to(cv2.cvtColor(frame.rgb, cv2.COLOR_RGB2HSV))
        return BackendMask(self._mask(frame.hsv))

    def feedback(self, frame: Frame, own: BackendMask, object_mask: np.ndarray, confidence: float,
                 confirmed: bool) -> None:
        hm = self.hist_model
        if hm is not None and not frame.empty and confidence >= self.learn_confidence and object_mask.any() \
                and (not hm.ready or own.mask is None or confirmed):
            # learn from a confident mask; once learned, only from masks confirmed by a second backend
            hm.learn(frame.hsv, object_mask)
