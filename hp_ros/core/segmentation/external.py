"""The ``external`` backend: a mask from another detector, given per frame
(``Segmenter.segment(external_mask=...)``; the node pairs it from ``external_mask_topic``)."""
from __future__ import annotations

from hp_ros.core.segmentation.backend import IMAGE, BackendMask, BackendSetup, Frame, ObjectBackend


class ExternalBackend(ObjectBackend):
    """``external``: the given mask's non-zero pixels (nothing when none came with the frame)."""

    name = "external"
    region = IMAGE

    def __init__(self, setup: BackendSetup):
        pass

    def object_mask(self, frame: Frame) -> BackendMask:
        if frame.external_mask is None:
            return BackendMask()
        return BackendMask(frame.external_mask[frame.sl] > 0)
