"""The ``detectron2`` backend: instance segmentation (e.g. PointRend) from a user config and
weights. detectron2 is not on PyPI: this module imports it only when the backend is built."""
from __future__ import annotations

import numpy as np

from hp_ros.core.segmentation.backend import IMAGE, BackendMask, BackendSetup, Frame, ObjectBackend


class Detectron2Backend(ObjectBackend):
    """Instance segmentation with detectron2 (e.g. PointRend) from a user config and weights.

    Only available when ``detectron2`` is importable (it is not on PyPI); construction raises
    ``ImportError`` with a readable message otherwise. The mask of the highest-scoring instance
    of ``class_id`` (any class when < 0) above ``score_threshold`` is returned.

    As the ``detectron2`` object backend it is built by the caller (it needs model files) and
    handed to the Segmenter (``Segmenter(..., detectron2=...)``); its score scales the object
    confidence.
    """

    name = "detectron2"
    region = IMAGE

    def __init__(self, config_file: str, weights: str, class_id: int = -1, score_threshold: float = 0.5,
                 device: str = "cpu"):
        try:
            from detectron2.config import get_cfg
            from detectron2.engine import DefaultPredictor
        except ImportError as e:
            raise ImportError("the detectron2 backend needs detectron2 (not installable from PyPI); "
                              "install it and its PointRend project, or choose another object backend") from e
        if not config_file or not weights:
            raise ValueError("the detectron2 backend needs detectron2_config and detectron2_weights")
        cfg = get_cfg()
        try:  # PointRend configs need their config keys registered
            from detectron2.projects import point_rend
            point_rend.add_pointrend_config(cfg)
        except ImportError:
            pass
        cfg.merge_from_file(config_file)
        cfg.MODEL.WEIGHTS = weights
        cfg.MODEL.DEVICE = device
        self.class_id, self.score_threshold = int(class_id), float(score_threshold)
        self.predictor = DefaultPredictor(cfg)

    def mask(self, rgb: np.ndarray) -> tuple[np.ndarray, float]:
        """``rgb`` ``(H, W, 3)`` -> (``(H, W)`` bool mask, score); empty mask and 0 when none."""
        out = self.predictor(np.ascontiguousarray(rgb[..., ::-1]))["instances"].to("cpu")
        scores = out.scores.numpy()
        keep = scores >= self.score_threshold
        if self.class_id >= 0:
            keep &= out.pred_classes.numpy() == self.class_id
        if not keep.any():
            return np.zeros(rgb.shape[:2], bool), 0.0
        i = int(np.argmax(np.where(keep, scores, -1)))
        return out.pred_masks[i].numpy().astype(bool), float(scores[i])

    @classmethod
    def create(cls, setup: BackendSetup) -> "Detectron2Backend":
        if setup.detectron2 is None:
            raise ValueError("object backend detectron2 selected but no Detectron2Backend given")
        return setup.detectron2

    def object_mask(self, frame: Frame) -> BackendMask:
        mask, score = self.mask(frame.rgb)
        return BackendMask(mask[frame.sl], confidence=score)
