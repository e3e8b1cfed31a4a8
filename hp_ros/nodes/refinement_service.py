"""The refinement node's /hp_ros/refine_pose service (a mixin of
:class:`hp_ros.nodes.refinement_node.RefinementNode`, on its own state): one request at a time,
the others answered "busy" at once; a request's checks, the frames of its window, its start pose,
the refinement (or the cold start's checked global estimate) and the answer built from the result.

A request that cannot be served is answered ``success = False`` with the reason: each step raises
:class:`Refused` with that text, so the steps stay short and the answer is written in one place.

Answers that are not a pose to use: a request that finds no camera_info or no synchronised frame
(the cold start's first, at graph start-up) waits up to ``first_frame_wait`` for the first frame and
is served then; after that it is answered ``success = False``, ``not ready: ...`` (logged at INFO,
throttled). A global estimate whose every search's answer failed the acceptance check
(:class:`hp_ros.core.global_pose.AnswerCheck`: ``global_min_iou``, ``global_max_penetration_mm``) is
answered ``success = False``, ``rejected: best mask IoU 0.870 < 0.94 after 3 global search(es) ...``,
with the best-fitting pose and its metrics still in the response; it is not published on
/hp_ros/refined_pose and not kept as the next request's start.
"""
from __future__ import annotations

import bisect
import math
import threading
import time
from collections import deque
from typing import NamedTuple, Optional

import numpy as np
from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

from hp_ros import graph
from hp_ros.core import priors
from hp_ros.core.global_pose import AnswerCheck
from hp_ros.io import msgs

MAX_ITERATIONS_LIMIT = 2000
# how a failure answer's message starts when the node has no camera_info or frame yet (the client asks
# again, quietly), and when every global search's answer failed the acceptance check (AnswerCheck)
NOT_READY, REJECTED = graph.REFINE_NOT_READY, graph.REFINE_REJECTED
# requests of one burst the service's reader keeps until the executor takes them (the rmw default is
# 10: of 20 concurrent requests 9 were lost and never answered); each is answered, "busy" at once
# while another is refined. 64 lost 12-16 of test_fuzz_graph's 100 requests (5 batches of 20 during a
# burst of malformed input that keeps the executor busy): a pending request costs its few hundred
# bytes, so the queue holds far more than a client sends at once
SERVICE_QUEUE_DEPTH = 256
SERVICE_QOS = QoSProfile(depth=SERVICE_QUEUE_DEPTH, reliability=ReliabilityPolicy.RELIABLE,
                         history=HistoryPolicy.KEEP_LAST)


def frame_for_stamp(stamps: list, want_ns: int, tol_ns: int):
    """Index in the sorted usable ``stamps`` of the frame to refine for a request stamp, or None.

    ``want_ns == 0``: the newest. A frame within ``tol_ns`` of the stamp: that one. A stamp inside
    the buffer's range (within ``tol_ns`` of its ends) whose own frame is not usable - its mask never
    arrived because the segmentation skipped it - gets the nearest usable frame (the response
    carries that frame's stamp; the tracker re-predicts from it). Outside the range: None.
    """
    if not stamps:
        return None
    if want_ns == 0:
        return len(stamps) - 1
    i = bisect.bisect_left(stamps, want_ns)
    near = [j for j in (i - 1, i) if 0 <= j < len(stamps)]
    best = min(near, key=lambda j: abs(stamps[j] - want_ns))
    if abs(stamps[best] - want_ns) <= tol_ns or stamps[0] - tol_ns <= want_ns <= stamps[-1] + tol_ns:
        return best
    return None


class Refused(Exception):
    """A request that is answered ``success = False`` with this text (``not_ready``: the node has no
    camera_info or frame yet; the message then starts ``not ready:``)."""

    def __init__(self, text: str, not_ready: bool = False):
        super().__init__(text)
        self.not_ready = not_ready


class FrameWindow(NamedTuple):
    """The buffered frames a request refines and how they were found."""
    stamps: list   # usable frame stamps [ns], oldest first; the answer's frame last
    want_ns: int   # the requested stamp (0: the newest frame)
    tol_ns: int    # sync_tolerance [ns]
    passed: bool   # the requested frame went by before the images were subscribed


class RefinePoseService:
    """The refine_pose service of the refinement node; its inputs (``ingest``, ``frames``, ...):
    :class:`hp_ros.nodes.refinement_inputs.RefinementInputs`."""

    def _start_serving(self) -> None:
        """The serving state: one request refined at a time, the figures of the last ones."""
        self._serving = threading.Lock()  # one refinement at a time; others are answered "busy"
        self._serving_since = 0.0
        self._typical_s = 5.0             # duration of the last refinement [s] (retry hint)
        self.served = deque(maxlen=100)   # (wall s, CPU s of the serving thread) of the successful requests
        self.refined = None        # (stamp_ns, T) last result
        self.busy = False

    def on_refine(self, request, response):
        self.counts["requests"] += 1
        if not self._serving.acquire(blocking=False):
            self.counts["answered_busy"] += 1
            elapsed = time.monotonic() - self._serving_since
            response.success = False
            response.message = (f"{graph.REFINE_BUSY} another refine_pose request is being served ({elapsed:.1f} s so "
                                f"far); retry in about {max(1.0, self._typical_s - elapsed):.0f} s")
            return response
        self.busy = True
        self._not_ready = False  # set by _fail(not_ready=True): a refusal before the first frame (logged at INFO)
        self._ran = False        # a refinement ran (its wall time counts, also for a rejected answer)
        self._serving_since = time.monotonic()
        cpu0 = time.thread_time()  # the request's own CPU time (torch runs one thread here): survives load
        try:
            self._serve(request, response)
        except Exception as e:  # noqa: BLE001 - a request must never take the node down
            response.success = False
            response.message = f"refinement failed: {type(e).__name__}: {e}"
        finally:
            self.busy = False
            wall = time.monotonic() - self._serving_since
            self._typical_s = max(1.0, wall)
            if self._ran:  # answers, rejected ones too; refusals (no frames yet, bad requests) take no refinement
                self.served.append((wall, time.thread_time() - cpu0))
            if self.images_on_demand:  # the linger counts from the answer
                self._images_until = time.monotonic() + float(self.p["image_linger"])
            self._serving.release()
        self.counts["succeeded" if response.success else "not_ready" if self._not_ready
                    else "rejected" if response.message.startswith(REJECTED) else "failed"] += 1
        if self._not_ready:  # the graph is starting: the client asks again, quietly
            self.get_logger().info(f"refine_pose: {response.message}", throttle_duration_sec=10.0)
        elif not response.success:
            self.get_logger().warning(f"refine_pose: {response.message}")
        return response

    def _recent_pose(self, stamp: int):
        """The newest of the tracked and the last refined pose ``(4, 4)`` when it is at most ``max_pose_age``
        from ``stamp``; None (a global estimate) otherwise."""
        cands = [c for c in (self.tracked_pose, self.refined) if c is not None]
        if not cands:
            return None
        newest = max(cands, key=lambda c: c[0])
        return newest[1] if abs(stamp - newest[0]) <= self.p["max_pose_age"] * 1e9 else None

    def _fail(self, response, text: str, not_ready: bool = False):
        """A failure answer; ``not_ready``: the node has no camera_info or frame yet (message ``not ready: ...``)."""
        response.success = False
        response.message = f"{NOT_READY} {text}" if not_ready else text
        self._not_ready = not_ready
        return response

    def _wait_for(self, ready, period: float = 0.02, extra: float = 0.0, wait: Optional[float] = None) -> bool:
        """Poll ``ready()`` for up to ``wait`` (default ``request_wait`` + ``extra``) seconds while the
        buffering thread runs (not past a shutdown); its result."""
        deadline = time.monotonic() + (self.p["request_wait"] + extra if wait is None else wait)
        while not ready():
            if time.monotonic() >= deadline or not self.context.ok():
                return False
            time.sleep(period)
        return True

    def _first_frame(self, need_depth: bool) -> bool:
        """The camera model and a usable frame are there (with ``need_depth``: the newest has its depth)."""
        stamps = self.usable_stamps()
        if self.camera is None or not stamps:
            return False
        if not need_depth:
            return True
        with self.lock:
            return "depth" in self.frames.get(stamps[-1], {})

    def _serve(self, request, response):
        """The request refined into ``response``, or refused with the reason."""
        try:
            terms, max_it, window, T_request = self._request_settings(request)
            found = self._frame_window(request, window)
            T0 = self._start_pose(request, T_request, found.stamps[-1])
            frames, no_hand = self._observations(found.stamps, T0)
            res, how, rejection = self._solve(request, frames, T0, max_it, terms)
        except Refused as e:
            return self._fail(response, str(e), e.not_ready)
        return self._answer(response, res, found, how, no_hand, rejection)

    def _request_settings(self, request):
        """``(terms, max_iterations, window_length, initial pose or None)`` of a request, checked
        before anything is subscribed or waited for."""
        terms = list(request.terms) or list(self.p["default_terms"])
        names = priors.term_names()
        bad = [t for t in terms if t not in names]
        if bad:
            raise Refused(f"unknown term(s) {bad}; valid terms: {list(names)}")
        max_it = int(request.max_iterations) or int(self.p["max_iterations"])
        if max_it > MAX_ITERATIONS_LIMIT:
            raise Refused(f"max_iterations {max_it} exceeds the limit {MAX_ITERATIONS_LIMIT}")
        window = max(int(request.window_length), 1)
        if window > int(self.p["buffer_size"]):
            raise Refused(f"window_length {window} is longer than the buffer ({self.p['buffer_size']} "
                          f"frames, buffer_size)")
        return terms, max_it, window, (self._request_pose(request) if request.use_initial_pose else None)

    def _request_pose(self, request) -> np.ndarray:
        """The request's ``initial_pose`` as a camera-frame ``(4, 4)``."""
        frame = request.initial_pose.header.frame_id
        if frame and frame != self.p["camera_frame"]:
            raise Refused(f"initial pose frame {frame!r} is not the camera frame {self.p['camera_frame']!r}")
        p, o = request.initial_pose.pose.position, request.initial_pose.pose.orientation
        vals = [p.x, p.y, p.z, o.x, o.y, o.z, o.w]
        if not all(math.isfinite(v) for v in vals):
            raise Refused("initial pose contains NaN or inf")
        try:
            return msgs.pose_to_matrix(request.initial_pose)
        except ValueError as e:
            raise Refused(f"invalid initial pose: {e}") from None

    def _frame_window(self, request, window: int) -> FrameWindow:
        """The ``window`` usable frames ending at the requested stamp, waiting a moment for them."""
        self.ingest()  # what arrived since the last request (camera_info, frames, joint states, pose)
        opened = self.open_images()
        # the cold start's first request comes at graph start-up, before the first frame (and its masks,
        # and for a global estimate its depth) is buffered: served as soon as it is, within first_frame_wait
        need_depth = (not request.use_initial_pose and "depth" in self.image_topics
                      and self.tracked_pose is None and self.refined is None)
        first_wait = float(self.p["first_frame_wait"])
        if not self._first_frame(need_depth):
            self._wait_for(lambda: self._first_frame(need_depth), wait=first_wait)
        if self.camera is None:
            raise Refused(f"no camera_info received yet (waited {first_wait:g} s)", not_ready=True)
        want = msgs.stamp_to_ns(request.stamp)
        # a request for the newest frame (the tracker's, when LOST) can arrive before that frame's
        # image and masks: give the buffering thread a moment (the newest frame is kept anyway);
        # images subscribed to just now: wait for the first frames (discovery, masks) a little longer
        tol = int(self.p["sync_tolerance"] * 1e9)
        if want > 0 or opened:
            def frames_there():
                usable = self.usable_stamps()
                return len(usable) >= window and max(usable, default=0) >= want - tol
            self._wait_for(frames_there, extra=float(self.p["open_wait"]) if opened else 0.0)
        stamps = self.usable_stamps()
        if not stamps:
            raise Refused(f"no synchronised frames buffered yet after {first_wait:g} s (need a colour image and an "
                          f"object mask with the same stamp)", not_ready=True)
        idx = frame_for_stamp(stamps, want, tol)
        passed = idx is None and 0 < want < stamps[0] and want <= self._opened_after_ns + tol
        if passed:  # the frame went by before the images were subscribed: the first frames since
            idx = min(window, len(stamps)) - 1
        if idx is None:
            raise Refused(f"no buffered frame at stamp {want} ns (buffer holds {stamps[0]}..{stamps[-1]} ns, "
                          f"{len(stamps)} frames)")
        if window > idx + 1:
            raise Refused(f"window_length {window} is longer than the {idx + 1} buffered frames ending at the "
                          f"requested stamp")
        return FrameWindow(stamps[idx + 1 - window: idx + 1], want, tol, passed)

    def _start_pose(self, request, T_request: Optional[np.ndarray], stamp: int) -> Optional[np.ndarray]:
        """The pose the refinement starts from; None: a global estimate from the frame (``_solve``)."""
        if request.use_initial_pose:
            T0 = T_request
        else:
            T0 = self._recent_pose(stamp)
            if T0 is None and "depth" not in self.image_topics:
                raise Refused("no initial pose: set use_initial_pose, wait for /hp_ros/object_pose, "
                              "or set use_depth (a global estimate needs depth)")
        if T0 is not None and T0[2, 3] <= 0:
            raise Refused("initial pose is behind the camera (z <= 0)")
        return T0

    def _observations(self, use: list, T0):
        """The window's ``FrameObservation`` list and why the hand is left out (None: it is used)."""
        from hp_ros.core.refine import FrameObservation

        T_cam_hand = self.cam_to_hand.T_cam_hand
        slots, qs = self._window_slots(use)
        no_hand = None
        if T_cam_hand is None:
            no_hand = "no camera->hand transform"
        elif any(q is None for q in qs):
            no_hand = (f"no joint states around the frame stamps (buffer {len(self.joints.stamps)} joint states"
                       + (f", {self.joints.stamps[0]}..{self.joints.stamps[-1]} ns)" if self.joints.stamps else ")"))
        if T0 is None and "depth" not in slots[-1]:  # checked before decoding anything
            raise Refused("no initial pose and no depth image for the requested frame (a global estimate needs "
                          "the aligned depth with the same stamp)")
        hand_masks = all("hand_mask" in f for f in slots)
        try:
            slots = [{k: (self._decode(k, v) if k in ("rgb", "object_mask", "hand_mask", "depth") else v)
                      for k, v in f.items()} for f in slots]
        except ValueError as e:
            raise Refused(f"buffered image could not be decoded: {e}") from None
        frames = [FrameObservation(
            rgb=f["rgb"], object_mask=f["object_mask"], hand_mask=f.get("hand_mask") if hand_masks else None,
            depth=f.get("depth"), q=None if no_hand else q, T_cam_hand=None if no_hand else self.cam_to_hand.at(s),
            stamp_ns=s) for s, f, q in zip(use, slots, qs)]
        if self.camera.height != frames[0].rgb.shape[0] or self.camera.width != frames[0].rgb.shape[1]:
            raise Refused(f"image size {frames[0].rgb.shape[1]}x{frames[0].rgb.shape[0]} does not match "
                          f"camera_info {self.camera.width}x{self.camera.height}")
        if any(f.object_mask.shape != f.rgb.shape[:2] for f in frames):
            raise Refused("object mask and image sizes differ")
        return frames, no_hand

    def _window_slots(self, use: list):
        """Copies of the window's buffered frames (taken under the lock: buffering continues
        meanwhile) and the joint states at their stamps (None where there are none)."""
        gap = int(self.p["max_joint_gap"] * 1e9)

        # joint states (100 Hz, one message per executor cycle) can lag behind the newest images:
        # give the buffering thread a moment to catch up with the requested stamps
        def joints_cover():
            self.ingest()
            with self.lock:
                latest = self.joints.latest()
            return latest is not None and latest[0] >= max(use)

        self._wait_for(joints_cover)
        with self.lock:
            return [dict(self.frames[s]) for s in use], [self.joints.at(s, gap) for s in use]

    def _solve(self, request, frames: list, T0, max_it: int, terms: list):
        """``(RefineResult, how the start pose was found, rejection)``: refined from ``T0``, or without
        one from a checked global estimate of the last frame (global_pose.py); ``rejection``: the
        answer's message prefix when every global search's answer failed the check ("" otherwise)."""
        if T0 is not None:
            import torch

            self._ran = True
            return self.refiner.refine(frames, self.camera, torch.as_tensor(T0, dtype=torch.float32),
                                       max_iterations=max_it, terms=terms), "", ""
        from hp_ros.core.global_pose import cold_start

        check = AnswerCheck(float(self.p["global_min_iou"]), float(self.p["global_max_penetration_mm"]),
                            int(self.p["global_attempts"]))
        res, found = cold_start(self.refiner, self.global_search, frames, self.camera,
                                max_iterations=max_it if request.max_iterations else int(self.p["global_iterations"]),
                                num_hypotheses=int(self.p["global_hypotheses"]), terms=terms, check=check)
        if res is None:
            raise Refused("no initial pose, and the object mask has too few depth pixels for a global estimate")
        self._ran = True
        rejected = [a for a in found.attempts if a is not None]
        rejection = ""
        if len(rejected) == len(found.attempts):  # every search's answer failed the check
            rejection = (f"{REJECTED} best {check.problem(res)} after {len(found.attempts)} global search(es) "
                         f"(global_min_iou / global_max_penetration_mm); the best-fitting pose is in the response, "
                         f"not published; ")
        return res, (f"global estimate {found.elapsed_s:.2f} s"
                     + (f" after {len(rejected)} rejected ({'; '.join(rejected)})" if rejected else "") + ", "), rejection

    def _answer(self, response, res, found: FrameWindow, how: str, no_hand: Optional[str], rejection: str = ""):
        """``response`` from the refinement result; it is logged and (``publish_refined_pose``) published
        - unless ``rejection`` (a global answer the check refused: a failure, see the module doc)."""
        use, want = found.stamps, found.want_ns
        cam = self.p["camera_frame"]
        T = res.T_cam_obj.double().numpy()
        response.poses = [msgs.make_pose_stamped(T[i], s, cam, PoseStamped) for i, s in enumerate(use)]
        iou = float(res.mask_iou[-1])
        sigma = np.asarray(self.p["refined_pose_sigma"], float) / max(iou if math.isfinite(iou) else 0.0, 0.1)
        cov = np.diag(sigma ** 2)
        response.pose = msgs.make_pose_with_covariance_stamped(T[-1], cov, use[-1], cam, PoseWithCovarianceStamped)
        response.initial_loss = float(res.initial_loss)
        response.final_loss = float(res.final_loss)
        response.loss_terms = list(res.final_terms)
        response.loss_values = [float(v) for v in res.final_terms.values()]
        response.mask_iou = iou
        response.max_penetration_mm = float(res.max_penetration_mm[-1])
        response.contact_count = int(res.contact_count[-1])
        response.iterations = int(res.iterations)
        response.elapsed_s = float(res.elapsed_s)
        # a rejected global answer is a failure: the tracker asks again with a later frame rather than
        # re-initialise from it (its pose stays in the response, for a user's inspection)
        response.success = not rejection
        substituted = want != 0 and abs(use[-1] - want) > found.tol_ns
        response.message = (f"{rejection}{how}refined {len(use)} frame(s) in {res.iterations} iterations, "
                            f"{res.elapsed_s:.2f} s, mask IoU {iou:.3f}"
                            + (f"; frame {use[-1]} instead of {want} ("
                               + ("it went by before the images were subscribed" if found.passed else "not segmented")
                               + ")" if substituted else "") + (f"; hand not used: {no_hand}" if no_hand else ""))
        if rejection:  # logged once (a warning) by on_refine; neither kept as a start nor published
            return response
        self.refined = (use[-1], T[-1])
        self.get_logger().info(f"refine_pose: {response.message} (loss {res.initial_loss:.4g} -> {res.final_loss:.4g})")
        if self.p["publish_refined_pose"]:
            self.pub.publish(response.pose)
        return response
