"""The segmentation node's inputs (a mixin of :class:`hp_ros.nodes.segmentation_node.SegmentationNode`,
on its own state: no indirection in the per-frame path): camera_info, depth and joint states taken
from their deferred readers, each stream's stamp checks, and the pairing of a waiting colour image
with its depth and the joint states around it (which image the worker segments next)."""
from __future__ import annotations

import time

from hp_ros.io import msgs

# at start-up, how long colour images wait for the first depth image before going without depth [s]
DEPTH_STARTUP_WAIT = 2.0


class SegmentationInputs:
    """Input intake and pairing of the segmentation node; state set up in its ``__init__``."""

    def on_info(self, msg):
        try:
            info = msgs.camera_info_to_intrinsics(msg, self.p["camera_frame"])
        except ValueError as e:
            self.bad.reject(e, "camera_info", "camera_info skipped: ")
            return
        if info.distorted:
            self.bad.warn("camera_distortion", "camera_info has distortion coefficients but no P: the image is used "
                                               "as if undistorted (subscribe to a rectified image for accuracy)")
        with self._cv:  # the stamp detector is shared with the worker's joint-state intake
            if not self._stamp_ok("camera_info", info.stamp_ns):
                return
            self.new_info = info   # taken over by the worker thread
            self._cv.notify()

    def on_depth(self, msg):
        with self._cv:
            if not self._image_ok(msg, self._depth_encodings, "depth", self.info or self.new_info) \
                    or not self._stamp_ok("depth", msgs.header_stamp_ns(msg)):
                return
            self.depth_queue.append(msg)
            self._depth_seen = True
            self._cv.notify()

    def on_joints(self, msg):
        """One joint state into the buffer (called with self._cv held, see _take_joints)."""
        try:
            self.joints.add(msg)
            self._last_joint_wall = time.monotonic()
        except ValueError as e:
            self.bad.reject(e, "joint_states", "joint_states skipped: ")

    def _stamp_ok(self, stream: str, stamp_ns: int) -> bool:
        """The stamp fits its stream (hp_ros.io.stamps); a confirmed jump of the timeline resets the
        alignment, the priors and the joint states (as a jump seen in the joint states does)."""
        v = self.stamps.check(stream, stamp_ns)
        if not v.accepted:
            self.bad.warn(f"{stream}_{v.kind}", f"{stream} skipped: {v.text}")
            return False
        if v.verdict == "reset":
            with self._cv:
                self.joints.clear()
                self.joints.reset_pending = True
        return True

    def _take_joints(self) -> None:
        """The joint states received since the last call into the buffer (self._cv held)."""
        for msg, _info in self.joint_reader.take():
            self.on_joints(msg)

    def _take_inputs(self) -> None:
        """camera_info (the newest), depth images and joint states received since the last call
        (self._cv held: it is re-entrant)."""
        infos = self.info_reader.take()
        if infos:
            self.on_info(infos[-1][0])
        if self.depth_reader is not None:
            for msg, _info in self.depth_reader.take():
                self.on_depth(msg)
        self._take_joints()

    def _paired(self, queue, stamp_ns):
        best, best_dt = None, None
        for m in queue:
            dt = abs(msgs.header_stamp_ns(m) - stamp_ns)
            if best_dt is None or dt < best_dt:
                best, best_dt = m, dt
        if best is None or best_dt > self.p["depth_max_dt"] * 1e9:
            return None
        return best

    def _next_ready(self):
        """The colour image to segment next as ``(image msg, depth msg or None, stages)``, removed
        from the queue; None when nothing is ready. Called with self._cv held.

        ``latest_only`` (live): the newest image whose inputs are complete (or waited long enough);
        the older ones still waiting are dropped - a node that fell behind catches up at once
        instead of segmenting a backlog (the tracker poses the dropped frames from the joint
        states). Otherwise the oldest, in order."""
        self._take_inputs()
        self._update_segmenter()
        if self.segmenter is None:
            now = time.monotonic()
            while self.pending and (now - self.pending[0][1] > self.p["input_wait"]
                                    or len(self.pending) == self.pending.maxlen):
                self.pending.popleft()
                self.bad.warn("no_info", "image skipped: no camera_info received for it")
            return None
        order = range(len(self.pending) - 1, -1, -1) if self.p["latest_only"] else range(len(self.pending))
        for i in order:
            msg, t_arrival, stages = self.pending[i]
            ready, depth_msg = self._inputs_ready(msg, t_arrival, len(self.pending) - i)
            if ready:
                for _ in range(i):  # older than the chosen one: dropped (latest_only) - none otherwise
                    self.pending.popleft()
                    self.skipped_behind += 1
                self.pending.popleft()
                stages["worker_free"] = max(stages["callback"], self._worker_free_ns)
                return msg, depth_msg, stages
            if not self.p["latest_only"]:
                return None  # keep the order: wait for the oldest
        return None

    def _inputs_ready(self, msg, t_arrival, waiting_behind: int):
        """``(ready, depth msg or None)`` of one waiting colour image: its joint states, depth and
        the camera->hand transform are there, or it waited ``input_wait``, or the queue is full.
        Called with self._cv held."""
        stamp = msgs.header_stamp_ns(msg)
        now = time.monotonic()
        waited = now - t_arrival > self.p["input_wait"]
        full = len(self.pending) == self.pending.maxlen
        if not full and not waited and not self.cam_hand.known:
            return False, None  # /tf_static may still come (start-up)
        # wait for the joint states to reach the image while they are flowing - and at start-up,
        # for the first input_wait after the first image, for the first ones (the stream's first
        # images must not go out without a hand mask because they won a race)
        joints_flowing = now - self._last_joint_wall <= self.p["input_wait"] or (
            self._last_joint_wall < 0 and now - self._first_image_wall <= self.p["input_wait"])
        if not full and joints_flowing and not self._joints_cover(stamp):
            return False, None
        depth_msg = None
        if self.p["use_depth"]:
            depth_msg = self._paired(self.depth_queue, stamp)
            if depth_msg is None and not self._depth_seen and now - self._first_image_wall < DEPTH_STARTUP_WAIT:
                # no depth stream yet (its reader can match after the colour one's): the first
                # observations must not be colour-only - one wrong centroid while the tracker's
                # initial covariance is wide moved it 2 cm and lost the track (1 demo run in ~35)
                return False, None
            newer_depth = any(msgs.header_stamp_ns(d) > stamp + self.p["depth_max_dt"] * 1e9
                              for d in self.depth_queue)
            # in order (latest_only false) a frame without depth must not hold up those behind it;
            # newest first, an older frame is taken only when its own depth is lost or late
            behind = not self.p["latest_only"] and (waiting_behind > 1 or full)
            if depth_msg is None and not (newer_depth or waited or behind):
                return False, None  # its depth may still come
        return True, depth_msg

    def _joints_cover(self, stamp_ns) -> bool:
        """Joint states reach this stamp (a message at or after it, or within one message period)."""
        latest = self.joints.latest()  # self._cv held by the caller
        return latest is not None and latest[0] >= stamp_ns - self.p["depth_max_dt"] * 1e9
