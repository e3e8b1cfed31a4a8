"""The object-backend registry and interface (hp_ros.core.segmentation.backend / .registry): every
registered name is an ObjectBackend that the Segmenter builds and the node's ``object_backend``
parameter accepts, and a backend registered from outside is used by the Segmenter (alone, combined
with a built-in one, and as a LOCATED backend that sets the working rectangle)."""
from __future__ import annotations

import numpy as np
import pytest

from hp_ros.core import segmentation as S
from hp_ros.core.segmentation.backend import IMAGE, LOCATED, BackendMask, ObjectBackend

K = np.array([[60.0, 0, 48.0], [0, 60.0, 32.0], [0, 0, 1]])
W, H = 96, 64
# no morphology and any area: the cleaned mask is the raw one
PLAIN = dict(open_px=0, close_px=0, min_area=1)


def _rect_mask(x0, y0, x1, y1):
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


class Rectangle(ObjectBackend):
    """A test backend: a fixed rectangle, confidence factor 0.5, a call counter as extra."""

    name = "rectangle"
    region = IMAGE

    def __init__(self, setup):
        self.calls = 0
        assert (setup.width, setup.height) == (W, H)

    def object_mask(self, frame):
        self.calls += 1
        return BackendMask(_rect_mask(30, 20, 70, 40)[frame.sl], confidence=0.5, extras={"rectangle_calls": self.calls})


class LocatedRectangle(Rectangle):
    """The same as a LOCATED backend: it reports where its mask lies before the working
    rectangle is fixed."""

    name = "located_rectangle"
    region = LOCATED

    def locate(self, frame):
        return (30, 20, 70, 40)


def test_every_registered_backend_implements_the_interface():
    assert {"color", "depth", "external", "detectron2", "model"} <= set(S.OBJECT_BACKENDS)
    for name, cls in S.OBJECT_BACKENDS.items():
        assert isinstance(cls, type) and issubclass(cls, ObjectBackend), name
        assert cls.name == name and not cls.__abstractmethods__, name
        assert S.parse_combination(name) == ([name], "")
    with pytest.raises(ValueError, match="object backend"):
        S.parse_combination("colour")


def test_segmenter_builds_every_registered_backend():
    """Each registered name resolves to an ObjectBackend instance inside the Segmenter (the
    detectron2 one is the instance the caller passes, here a stand-in without detectron2)."""
    from hp_ros.core.objects import ObjectModel

    class FakeDetectron2(S.Detectron2Backend):
        def __init__(self):  # no detectron2 needed
            pass

        def mask(self, rgb):
            return _rect_mask(10, 10, 30, 30), 0.8

    d2 = FakeDetectron2()
    extra = {"model": dict(object_model=ObjectModel.builtin("soup_can")), "detectron2": dict(detectron2=d2)}
    for name in S.OBJECT_BACKENDS:
        sg = S.Segmenter(K, W, H, None, S.SegmenterConfig(object_backend=name, **PLAIN), **extra.get(name, {}))
        b = sg.backend(name)
        assert isinstance(b, S.OBJECT_BACKENDS[name]) and isinstance(b, ObjectBackend), name
    assert S.Segmenter(K, W, H, None, S.SegmenterConfig(object_backend="detectron2", **PLAIN),
                       detectron2=d2).backend("detectron2") is d2
    # the detectron2 score scales the confidence through the interface
    r = S.Segmenter(K, W, H, None, S.SegmenterConfig(object_backend="detectron2", **PLAIN),
                    detectron2=d2).segment(np.zeros((H, W, 3), np.uint8))
    np.testing.assert_array_equal(r.object_mask, _rect_mask(10, 10, 30, 30))
    assert r.object_confidence == pytest.approx(0.8)


def test_node_parameter_accepts_the_registered_backends(monkeypatch):
    pytest.importorskip("rclpy")
    from hp_ros.nodes.segmentation_params import SEG_PARAMS

    check = SEG_PARAMS["object_backend"].check
    for name in S.OBJECT_BACKENDS:
        assert check(name) is None, name
    assert check("color|depth") is None and check("model+color") is None
    assert check("rectangle") is not None
    monkeypatch.setitem(S.OBJECT_BACKENDS, "rectangle", Rectangle)
    assert check("rectangle") is None and check("rectangle|depth") is None


def test_a_registered_backend_is_used_by_the_segmenter(monkeypatch):
    monkeypatch.setitem(S.OBJECT_BACKENDS, "rectangle", Rectangle)
    rgb = np.zeros((H, W, 3), np.uint8)
    sg = S.Segmenter(K, W, H, None, S.SegmenterConfig(object_backend="rectangle", **PLAIN))
    assert isinstance(sg.backend("rectangle"), Rectangle)
    r = sg.segment(rgb)
    np.testing.assert_array_equal(r.object_mask, _rect_mask(30, 20, 70, 40))
    assert r.raw["rect"] == (0, 0, W, H) and r.raw["rectangle_calls"] == 1
    assert r.object_confidence == pytest.approx(0.5)          # clean mask 1.0 x the backend's 0.5
    assert r.observation.valid and r.observation.area == 800
    # intersection with a built-in backend (external): the overlap, rated by agreement
    ext = _rect_mask(50, 20, 90, 40)
    sg = S.Segmenter(K, W, H, None, S.SegmenterConfig(object_backend="rectangle+external", **PLAIN))
    r = sg.segment(rgb, external_mask=ext)
    np.testing.assert_array_equal(r.object_mask, _rect_mask(50, 20, 70, 40))
    assert r.object_confidence == pytest.approx((0.5 + 0.5 * 400 / 1200) * 0.5)
    # the external backend without its input: the rectangle alone, confidence halved
    r = sg.segment(rgb)
    np.testing.assert_array_equal(r.object_mask, _rect_mask(30, 20, 70, 40))
    assert r.object_confidence == pytest.approx(0.5 * 0.5)
    # unregistered again: the name is refused
    monkeypatch.delitem(S.OBJECT_BACKENDS, "rectangle")
    with pytest.raises(ValueError, match="object backend"):
        S.Segmenter(K, W, H, None, S.SegmenterConfig(object_backend="rectangle"))


def test_a_located_backend_sets_the_working_rectangle(monkeypatch):
    monkeypatch.setitem(S.OBJECT_BACKENDS, "located_rectangle", LocatedRectangle)
    sg = S.Segmenter(K, W, H, None, S.SegmenterConfig(object_backend="located_rectangle", **PLAIN))
    r = sg.segment(np.zeros((H, W, 3), np.uint8))
    assert r.raw["rect"] == (30, 20, 70, 40) and r.raw["located_rectangle"].shape == (20, 40)
    np.testing.assert_array_equal(r.object_mask, _rect_mask(30, 20, 70, 40))


class PosedRectangle(ObjectBackend):
    """A test backend with a depth-fit-like answer: a rectangle, and a pose with its covariance."""

    name = "posed_rectangle"
    region = IMAGE
    T = np.array([[1.0, 0, 0, 0.01], [0, 1, 0, 0.02], [0, 0, 1, 0.5], [0, 0, 0, 1]])

    def __init__(self, setup):
        pass

    def object_mask(self, frame):
        return BackendMask(_rect_mask(40, 10, 80, 50)[frame.sl], pose=self.T, pose_covariance=np.eye(6) * 1e-4,
                           pose_confidence=0.7)


def test_three_backends_are_combined_by_the_operator(monkeypatch):
    """Every backend of a combination counts (not the first two): intersection and union of three
    masks, agreement over all that gave masks, a missing input halves the confidence; a backend's
    pose reaches the typed observation (not ``raw``)."""
    monkeypatch.setitem(S.OBJECT_BACKENDS, "rectangle", Rectangle)
    monkeypatch.setitem(S.OBJECT_BACKENDS, "posed_rectangle", PosedRectangle)
    rgb = np.zeros((H, W, 3), np.uint8)
    rect, ext, posed = _rect_mask(30, 20, 70, 40), _rect_mask(50, 20, 90, 40), _rect_mask(40, 10, 80, 50)
    inter, union = rect & ext & posed, rect | ext | posed
    agreement = inter.sum() / union.sum()
    sg = S.Segmenter(K, W, H, None, S.SegmenterConfig(object_backend="rectangle+external+posed_rectangle", **PLAIN))
    r = sg.segment(rgb, external_mask=ext)
    np.testing.assert_array_equal(r.object_mask, inter)          # (50..70) x (20..40): all three
    assert r.object_confidence == pytest.approx((0.5 + 0.5 * agreement) * 0.5)
    np.testing.assert_allclose(r.observation.pose, PosedRectangle.T)
    np.testing.assert_allclose(r.observation.pose_covariance, np.eye(6) * 1e-4)
    assert r.observation.pose_confidence == pytest.approx(0.7)
    assert not any(k.startswith("model_") for k in r.raw)
    sg = S.Segmenter(K, W, H, None, S.SegmenterConfig(object_backend="rectangle|external|posed_rectangle", **PLAIN))
    r = sg.segment(rgb, external_mask=ext)
    np.testing.assert_array_equal(r.object_mask, union)
    # the external backend without input: the other two, their agreement, and halved
    r = sg.segment(rgb)
    np.testing.assert_array_equal(r.object_mask, rect | posed)
    two = (rect & posed).sum() / (rect | posed).sum()
    assert r.object_confidence == pytest.approx((0.5 + 0.5 * two) * 0.5 * 0.5)
