"""The tracking node's client of /hp_ros/refine_pose: ask when the track is LOST (from the tracker's
re-centred estimate) and while it has no pose at all (INITIALIZING without an initial pose: the
refinement node then makes a global estimate from the frame, :mod:`hp_ros.core.global_pose`), give
up after ``refinement_timeout``, hand a good answer (mask IoU >= ``min_refinement_iou``) to the
tracker, which re-initialises at the answer's frame and re-predicts through the joint states since. After a
failed or refused answer the next request is a global estimate.

Answers that are no pose to use (issue 26), each asked again with a later frame, never at every frame:

* ``not ready: ...`` (the refinement node has no camera_info or frame yet: the graph is starting) and
  ``busy: ...``: asked again ``NOT_READY_RETRY_S`` later; one INFO line per such episode, no warning.
* ``rejected: ...`` (every global search's answer failed the node's acceptance check, which had it
  search again ``global_attempts`` times; the best pose is in the response): used when its mask IoU
  reaches ``min_refinement_iou``, with a (throttled) warning - the check is stricter than what the
  tracker needs to start, and the filter's gates and LOST handle a poor start. In the default graph a
  soup can whose answers never passed the check (IoU just under ``global_min_iou``) then never posed
  at all, where the answer (ADD-S 0.15 cm) tracked well.
* ``rejected: ...`` below ``min_refinement_iou``, any other failure, a success below
  ``min_refinement_iou``, a failed call: asked again after a back-off, ``RETRY_BACKOFF_S[0]`` doubling per consecutive failure up to
  ``RETRY_BACKOFF_S[1]`` (on real data the check may never pass: the refinement node then runs a
  request every few seconds, not back to back); a warning per kind (throttled, counted in
  /diagnostics). The back-off starts again after an answer that is used, or once the track is
  TRACKING."""
from __future__ import annotations

import time
from typing import Callable

from geometry_msgs.msg import PoseStamped
from hp_ros_msgs.srv import RefinePose

from hp_ros import graph
from hp_ros.core.ekf.track_policy import TrackState
from hp_ros.io import msgs

# a "not ready:" or "busy:" refusal is asked again this much later [s]
NOT_READY_RETRY_S = 0.5
# a failed or rejected answer: asked again after the first value [s], doubled per consecutive failure, at most the second
RETRY_BACKOFF_S = (0.5, 8.0)


class RefinementClient:
    """At most one refine_pose request in flight; :meth:`poll` (from a timer) takes its answer."""

    def __init__(self, node, tracker, params: dict, errors, clock: Callable[[], float] = time.monotonic):
        self.node, self.tracker, self.p, self.errors = node, tracker, params, errors
        self.clock = clock  # monotonic seconds (a test's own clock)
        self.client = node.create_client(RefinePose, graph.SERVICES["refine_pose"])
        self.future = None
        self.started = 0.0
        self.requests = 0
        self.global_pending = False  # a global request failed: asked again by poll (the world may be still)
        self.last_failed = False     # the last answer was a failure or refused
        self.retry_at = 0.0          # no request before this (clock): a refusal's retry or the failures' back-off
        self.failures = 0            # consecutive failed or rejected answers (the back-off)
        self.waiting_logged = False  # the INFO line of a "not ready" episode was written

    def request(self, stamp: int, seed=None, global_estimate: bool = False) -> None:
        """Ask for a refinement of the frame at ``stamp`` (unless disabled, busy or unavailable),
        starting from ``seed`` ``(4, 4)`` when given (after a time jump: the last estimate), from
        no pose with ``global_estimate`` (the node finds one), else from the tracker's."""
        if not self.p["request_refinement"] or self.future is not None or self.clock() < self.retry_at \
                or not self.client.service_is_ready():
            return
        # a LOST track whose last answer was refused asks for a global estimate (its estimate may be
        # beyond the refinement's reach)
        global_estimate = global_estimate or (self.last_failed and seed is None)
        req = RefinePose.Request()
        # a global estimate is of the newest buffered frame (stamp 0): the answer carries its stamp
        req.stamp = msgs.ns_to_stamp(0 if global_estimate else stamp, type(req.stamp))
        self.global_pending = global_estimate
        req.use_initial_pose = not global_estimate
        if not global_estimate:
            T0 = self.tracker.refinement_start_pose(stamp) if seed is None else seed
            req.initial_pose = msgs.make_pose_stamped(T0, stamp, self.p["camera_frame"], PoseStamped)
        self.future = self.client.call_async(req)
        self.started = self.clock()
        self.requests += 1

    def poll(self) -> None:
        """Give up on a request that takes too long; take a finished one's answer; ask again for a
        global estimate that failed (once its retry time has come) while the track has no pose."""
        now = self.clock()
        if self.tracker.state == TrackState.TRACKING:
            self.failures = 0  # a later loss starts with the shortest back-off
        if self.future is None:
            if self.global_pending and now >= self.retry_at \
                    and self.tracker.state != TrackState.TRACKING and self.tracker.pending_init is None:
                self.request(0, global_estimate=True)
            return
        if not self.future.done():
            if now - self.started > self.p["refinement_timeout"]:
                self.future.cancel()
                self.future = None
                self.errors.warn("refine_timeout", f"refine_pose gave no answer within "
                                                   f"{self.p['refinement_timeout']} s: asking again")
            return
        fut, self.future = self.future, None
        self.last_failed = True
        try:
            res = fut.result()
        except Exception as e:  # noqa: BLE001 - a failed service call must not stop tracking
            self._failed("refine", f"refine_pose call failed: {e}", now)
            return
        message = getattr(res, "message", "")
        if res is not None and not res.success and message.startswith((graph.REFINE_NOT_READY, graph.REFINE_BUSY)):
            # the graph is starting (or another client's request runs): asked again soon, quietly
            self.retry_at = now + NOT_READY_RETRY_S
            if not self.waiting_logged:
                self.waiting_logged = True
                self.node.get_logger().info(f"waiting for the refinement node ({message}): asking again every "
                                            f"{NOT_READY_RETRY_S} s")
            return
        self.waiting_logged = False
        rejected = res is not None and not res.success and message.startswith(graph.REFINE_REJECTED)
        if res is None or (not res.success and not rejected):
            self._failed("refine_failed", f"refine_pose failed: {message or 'no answer'}", now)
        elif not res.mask_iou >= self.p["min_refinement_iou"]:  # rejected or not, too poor to start from
            key, text = ("refine_rejected", f"refine_pose answer rejected: {message}") if rejected else \
                ("refine_iou", f"refinement result not used: mask IoU {res.mask_iou:.2f} < min_refinement_iou "
                               f"{self.p['min_refinement_iou']}")
            self._failed(key, text, now)
        else:
            if rejected:
                self.errors.warn("refine_rejected", f"using the refinement node's best answer although its check "
                                                    f"rejected it (mask IoU {res.mask_iou:.3f} >= min_refinement_iou "
                                                    f"{self.p['min_refinement_iou']}): {message}")
            if self.tracker.reinitialize(msgs.pose_to_matrix(res.pose), msgs.covariance_from_msg(res.pose),
                                         msgs.header_stamp_ns(res.pose)):
                # at the refined frame's stamp: the tracker re-predicts from there with the joint states
                # since (the object moved while the refinement ran)
                self.node.get_logger().info(f"re-initialising from the refinement result (mask IoU {res.mask_iou:.2f})")
            self.global_pending = self.last_failed = False
            self.failures, self.retry_at = 0, now

    def _failed(self, key: str, text: str, now: float) -> None:
        """A failed, rejected or unusable answer: the next request after the back-off, a (throttled) warning."""
        self.failures += 1
        delay = min(RETRY_BACKOFF_S[0] * 2 ** (self.failures - 1), RETRY_BACKOFF_S[1])
        self.retry_at = now + delay
        self.errors.warn(key, f"{text}; asking again in {delay:.1f} s, with a later frame")
