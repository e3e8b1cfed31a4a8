"""The tracking node's client of /hp_ros/refine_pose (:class:`hp_ros.nodes.refine_client.RefinementClient`)
against fake node, service and tracker, on its own clock (no rclpy context, no waiting): what it
does with each kind of answer - a rejected global answer is used when its IoU reaches
min_refinement_iou (with a warning), otherwise asked again with a later frame after a growing
back-off; the refinement node's early "not ready" refusals are asked again
soon and quietly (one INFO line, no warning)."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("hp_ros_msgs.srv")

from geometry_msgs.msg import PoseWithCovarianceStamped  # noqa: E402
from hp_ros_msgs.srv import RefinePose  # noqa: E402

from hp_ros import graph  # noqa: E402
from hp_ros.core.ekf.track_policy import TrackState  # noqa: E402
from hp_ros.io import msgs  # noqa: E402
from hp_ros.nodes.refine_client import NOT_READY_RETRY_S, RETRY_BACKOFF_S, RefinementClient  # noqa: E402


class _Future:
    def __init__(self, res, done=True):
        self.res, self._done = res, done

    def done(self):
        return self._done

    def result(self):
        return self.res

    def cancel(self):
        pass


class _Service:
    def __init__(self):
        self.requests, self.answers = [], []

    def service_is_ready(self):
        return True

    def call_async(self, req):
        self.requests.append(req)
        # no answer queued: one that never comes (the test counts the requests)
        return _Future(self.answers.pop(0)) if self.answers else _Future(None, done=False)


class _Logger:
    def __init__(self):
        self.lines = []

    def info(self, text, **_kw):
        self.lines.append(("info", text))

    def warning(self, text, **_kw):
        self.lines.append(("warn", text))


class _Node:
    def __init__(self):
        self.service, self.logger = _Service(), _Logger()

    def create_client(self, _type, _name):
        return self.service

    def get_logger(self):
        return self.logger


class _Tracker:
    state, pending_init = TrackState.INITIALIZING, None

    def __init__(self):
        self.reinitialized = []

    def refinement_start_pose(self, _stamp):
        return np.eye(4)

    def reinitialize(self, T, cov, stamp):
        self.reinitialized.append((T, stamp))
        self.state = TrackState.TRACKING
        return True


class _Errors:
    def __init__(self):
        self.warnings = []

    def warn(self, key, text, value=None):
        self.warnings.append((key, text))


class _Clock:
    t = 100.0

    def __call__(self):
        return self.t


PARAMS = {"request_refinement": True, "refinement_timeout": 20.0, "min_refinement_iou": 0.7,
          "camera_frame": graph.CAMERA_FRAME}


def _client():
    node, tracker, errors, clock = _Node(), _Tracker(), _Errors(), _Clock()
    return RefinementClient(node, tracker, PARAMS, errors, clock=clock), node, tracker, errors, clock


def _answer(success: bool, message: str, iou: float = 0.0, stamp: int = 1_000_000_000):
    res = RefinePose.Response(success=success, message=message, mask_iou=iou)
    T = np.eye(4)
    T[2, 3] = 0.5
    res.pose = msgs.make_pose_with_covariance_stamped(T, np.eye(6) * 1e-4, stamp, graph.CAMERA_FRAME,
                                                      PoseWithCovarianceStamped)
    return res


REJECTED = "rejected: best mask IoU 0.650 < 0.94 after 3 global search(es) ...; global estimate 1.20 s ..."


def _frame(client, stamp):
    """What the node does per frame while INITIALIZING (tracking_outputs.FrameOutputs.publish), then its timer."""
    client.request(stamp, global_estimate=True)
    client.poll()


def test_a_rejected_answer_below_min_refinement_iou_is_not_used_and_asked_again_later_with_a_later_frame():
    client, node, tracker, errors, clock = _client()
    svc = node.service
    svc.answers += [_answer(False, REJECTED, 0.65), _answer(False, REJECTED, 0.64)]
    _frame(client, 1)
    assert len(svc.requests) == 1 and not tracker.reinitialized
    # the frames that follow at once do not ask again (the service is not hammered) ...
    for stamp in (2, 3, 4):
        _frame(client, stamp)
        clock.t += 0.1
    assert len(svc.requests) == 1
    assert [k for k, _ in errors.warnings] == ["refine_rejected"] and "0.650 < 0.94" in errors.warnings[0][1]
    # ... the first frame after the back-off does: a global estimate again, of the newest frame
    clock.t = 100.0 + RETRY_BACKOFF_S[0]
    _frame(client, 5)
    assert len(svc.requests) == 2 and not tracker.reinitialized
    req = svc.requests[-1]
    assert not req.use_initial_pose and msgs.stamp_to_ns(req.stamp) == 0
    # a second rejection in a row: twice the back-off
    clock.t += RETRY_BACKOFF_S[0]
    _frame(client, 6)
    assert len(svc.requests) == 2
    clock.t += RETRY_BACKOFF_S[0]
    svc.answers.append(_answer(True, "global estimate 0.9 s, refined 1 frame(s) ...", 0.97, stamp=7))
    _frame(client, 7)
    assert len(svc.requests) == 3
    # a good answer is used
    assert len(tracker.reinitialized) == 1 and tracker.reinitialized[0][1] == 7
    assert client.failures == 0 and not client.global_pending


def test_a_rejected_answer_that_reaches_min_refinement_iou_starts_the_track_with_a_warning():
    """The node's check (global_min_iou 0.94) is stricter than what the tracker needs to start: its
    best answer at IoU 0.87 starts the track (in the default graph a soup can never posed
    otherwise), and the warning says it was a rejected one."""
    client, node, tracker, errors, clock = _client()
    node.service.answers.append(_answer(False, REJECTED.replace("0.650", "0.870"), 0.87, stamp=3))
    _frame(client, 1)
    assert len(tracker.reinitialized) == 1 and tracker.reinitialized[0][1] == 3
    assert [k for k, _ in errors.warnings] == ["refine_rejected"] and "although its check rejected" in errors.warnings[0][1]
    assert client.failures == 0 and not client.global_pending and not client.last_failed


def test_the_back_off_is_bounded():
    client, node, tracker, errors, clock = _client()
    waits = []
    for _ in range(10):
        node.service.answers.append(_answer(False, REJECTED, 0.65))
        start = clock.t
        while True:
            n = len(node.service.requests)
            _frame(client, int(clock.t * 1e9))
            if len(node.service.requests) > n:
                break
            clock.t += 0.25
        waits.append(clock.t - start)
    assert waits[1] == pytest.approx(RETRY_BACKOFF_S[0], abs=0.25)
    assert max(waits) <= RETRY_BACKOFF_S[1] + 0.25 and waits[-1] >= RETRY_BACKOFF_S[1] - 0.25, waits
    assert not tracker.reinitialized


def test_early_refusals_are_asked_again_soon_and_quietly():
    client, node, tracker, errors, clock = _client()
    svc = node.service
    refusals = ["not ready: no camera_info received yet (waited 5 s)",
                "not ready: no synchronised frames buffered yet after 5 s (need ...)",
                "busy: another refine_pose request is being served (0.3 s so far); retry in about 1 s"]
    for text in refusals * 3:
        svc.answers.append(_answer(False, text))
        n = len(svc.requests)
        _frame(client, int(clock.t * 1e9))
        assert len(svc.requests) == n + 1
        _frame(client, int(clock.t * 1e9) + 1)  # not at once ...
        assert len(svc.requests) == n + 1
        clock.t += NOT_READY_RETRY_S            # ... but soon (no back-off growth)
    assert errors.warnings == [], errors.warnings
    infos = [t for kind, t in node.logger.lines if kind == "info"]
    assert len(infos) == 1 and "waiting for the refinement node" in infos[0], node.logger.lines
    assert not [t for kind, t in node.logger.lines if kind == "warn"]
    # the node ready: the answer is used
    svc.answers.append(_answer(True, "global estimate 0.9 s, refined ...", 0.97))
    _frame(client, int(clock.t * 1e9))
    assert len(tracker.reinitialized) == 1


def test_a_lost_track_asks_with_its_estimate_first():
    """LOST (a pose to start from): the request carries the tracker's estimate at the frame's stamp."""
    client, node, tracker, errors, clock = _client()
    tracker.state = TrackState.LOST
    node.service.answers.append(_answer(True, "refined 1 frame(s) ...", 0.95, stamp=42))
    client.request(42)
    assert node.service.requests[0].use_initial_pose and msgs.stamp_to_ns(node.service.requests[0].stamp) == 42
    client.poll()
    assert tracker.reinitialized and tracker.reinitialized[0][1] == 42
