"""The refinement node's inputs (a mixin of :class:`hp_ros.nodes.refinement_node.RefinementNode`, on
its own state: no indirection when a request takes its frames): the deferred readers, the image
subscriptions opened from start-up and per request and closed once idle, the ring buffer of frames
matched by header stamp, the camera model, joint states and tracked pose taken from their readers,
and the decoding of the few frames a request refines. Why the images are subscribed to only on
demand and stay serialised until then: the node module's docstring."""
from __future__ import annotations

import time
from collections import OrderedDict

import numpy as np
from geometry_msgs.msg import PoseWithCovarianceStamped
from sensor_msgs.msg import CameraInfo, Image, JointState

from hp_ros import graph
from hp_ros.io import msgs, validate
from hp_ros.nodes.buffers import JointStateBuffer
from hp_ros.nodes.deferred import DeferredReader

LINGER_CHECK = 0.1  # [s] period of the check that closes the idle image subscriptions (while they are open)


def _stamp_or_zero(msg_or_bytes) -> int:
    """Header stamp [ns] of a message or its CDR bytes; 0 when it cannot be read."""
    try:
        if isinstance(msg_or_bytes, (bytes, bytearray)):
            return msgs.serialized_header_stamp_ns(msg_or_bytes)
        return msgs.header_stamp_ns(msg_or_bytes)
    except (ValueError, AttributeError, TypeError):
        return 0


class RefinementInputs:
    """Input intake and frame buffer of the refinement node; its own state is set up in
    :meth:`_start_inputs`, the node's (``p``, ``lock``, ``counts``, ``stamps``, ``errors``, ``hand``,
    the service's ``busy``) in the node's ``__init__``."""

    _ENCODINGS = {"rgb": ("rgb8", "bgr8"), "depth": ("16UC1", "32FC1"),
                  "object_mask": ("mono8", "8UC1"), "hand_mask": ("mono8", "8UC1")}

    def _start_inputs(self, bus, p: dict) -> None:
        """The buffers and the deferred readers; the image streams subscribed from start-up."""
        self.frames: "OrderedDict[int, dict]" = OrderedDict()  # stamp_ns -> {rgb, object_mask, hand_mask, depth}
        self.camera = None
        self._camera_frame_seen = None
        self.tracked_pose = None   # (stamp_ns, T) from the tracker
        self.joints = JointStateBuffer(self.hand.joint_state_mapper(), stamps=self.stamps)
        # Inputs wait in their DDS readers' histories (keep-last) and are taken when a request
        # or the diagnostics timer needs them (hp_ros.nodes.deferred): the idle node runs no
        # Python per message and decodes nothing nobody asked for. Images stay serialised until a
        # request refines their frame (in one process with the segmentation node: the message
        # objects it received).
        n = int(p["buffer_size"])
        reader = lambda t, topic, depth, raw=False: DeferredReader(self, bus, t, topic, depth, raw=raw)  # noqa: E731
        self.image_topics = {"rgb": graph.CAMERA_TOPICS["color_image"], "object_mask": graph.TOPICS["object_mask"],
                             "hand_mask": graph.TOPICS["hand_mask"]}
        if p["use_depth"]:
            self.image_topics["depth"] = graph.CAMERA_TOPICS["depth_image"]
        self._open_reader = lambda topic: reader(Image, topic, n, raw=True)  # noqa: E731
        self.image_readers = {}  # kind -> DeferredReader while the images are subscribed (open_images)
        self._linger_timer = None  # closes them when their linger ends (_start_linger_timer, once the node has its groups)
        # in one process (a bus) images are handed over as objects, and a bus cannot unsubscribe: always open
        self.images_on_demand = bus is None and float(p["image_linger"]) >= 0
        self._images_until = time.monotonic() + max(0.0, float(p["image_linger"]))  # closed after (monotonic)
        self._opened_after_ns = 0  # newest camera_info stamp when the images were last opened
        self._newest_info_ns = 0
        self.info_reader = reader(CameraInfo, graph.CAMERA_TOPICS["color_info"], 1)
        # joint states over the buffered frames' span (30 Hz frames, 100 Hz joints) and a margin
        self.joint_reader = reader(JointState, graph.JOINT_STATES, max(200, int(2 * 100 * n / 30)))
        self.pose_reader = reader(PoseWithCovarianceStamped, graph.TOPICS["object_pose"], 1)
        self.ingested = 0  # messages taken from the readers (counted in /diagnostics)
        self.decoded = 0   # images decoded (only for requests)
        self.image_openings = 0  # times the image subscriptions were opened
        self.open_images()  # from start-up: a cold start's first request comes with the first frames

    # ------------------------------------------------------------------ buffering
    def _slot(self, stamp: int) -> dict:
        """Frame slot for ``stamp``: an existing one within ``sync_tolerance`` or a new one (lock held)."""
        tol = int(self.p["sync_tolerance"] * 1e9)
        best = min(self.frames, key=lambda s: abs(s - stamp), default=None)
        if best is not None and abs(best - stamp) <= tol:
            return self.frames[best]
        # frames far ahead of an accepted stamp belong to a timeline its stream left (hp_ros.io.stamps):
        # a looping bag's new frames replace them instead of being "older than the buffer"
        jump = int(self.p["max_stamp_jump"] * 1e9)
        for s in [s for s in self.frames if s > stamp + jump]:
            del self.frames[s]
        if len(self.frames) >= int(self.p["buffer_size"]) and stamp < next(iter(self.frames)):
            return {}  # older than the whole (full) buffer: dropped (the caller's dict is discarded)
        self.frames[stamp] = slot = {}
        self.frames = OrderedDict(sorted(self.frames.items()))
        newest = next(reversed(self.frames))
        max_age = int(self.p["max_frame_age"] * 1e9)
        while len(self.frames) > int(self.p["buffer_size"]) or next(iter(self.frames)) < newest - max_age:
            self.frames.popitem(last=False)  # evicted by count and by age
            self.counts["frames_dropped"] += 1
        return slot

    # ------------------------------------------------------------------ image subscriptions
    def open_images(self) -> bool:
        """Subscribe to the image streams unless they are open; True when this call opened them."""
        if self.images_on_demand:
            self._images_until = max(self._images_until, time.monotonic() + float(self.p["image_linger"]))
        with self.lock:
            if self.image_readers:
                return False
            self.image_readers = {kind: self._open_reader(topic) for kind, topic in self.image_topics.items()}
            self._opened_after_ns = self._newest_info_ns
            self.image_openings += 1
        if self._linger_timer is not None and self._linger_timer.is_canceled():
            self._linger_timer.reset()
        return True

    def _start_linger_timer(self, callback_group) -> None:
        """The timer that closes the image subscriptions once their linger has passed: it runs only
        while they are open (every LINGER_CHECK s), so they close within that of the linger's end
        (the 1 s diagnostics timer kept them open up to a second longer: 30 frames of masks
        published and four images per frame received for nothing)."""
        if self.images_on_demand:
            self._linger_timer = self.create_timer(LINGER_CHECK, self.close_idle_images, callback_group=callback_group)

    def close_idle_images(self) -> None:
        """Unsubscribe from the image streams (and forget the buffered frames) once ``image_linger``
        has passed since the stream's first frame or the last request, unless a request is being
        served. (Until the first camera_info the images stay subscribed: a cold start asks with
        the first frames, however long the graph took to come up.)"""
        if not self.images_on_demand or self.busy:
            return
        if not self._newest_info_ns:
            self._take_camera_info(self.info_reader.take())
            self._images_until = time.monotonic() + float(self.p["image_linger"])
            return
        with self.lock:  # checked under the lock: a request may begin meanwhile (open_images moves the linger first)
            if not self.image_readers or self.busy or time.monotonic() < self._images_until:
                return
            for rd in self.image_readers.values():
                rd.close(self)
            self.image_readers = {}
            self.frames.clear()
            if self._linger_timer is not None:
                self._linger_timer.cancel()

    # Buffering keeps the messages themselves: they are decoded only for the few frames a request
    # refines, not for every frame at 30 Hz (the node spends its idle time doing nothing).
    def ingest(self) -> None:
        """Take what the readers received since the last call into the frame buffer, the joint
        state buffer, the camera model and the tracked pose."""
        with self.lock:
            for kind, rd in self.image_readers.items():
                batch = rd.take()
                self.stamps.skip_gap(kind, [_stamp_or_zero(d) for d, _ in batch])  # takes are seconds apart
                for data, _info in batch:
                    self.ingested += 1
                    self.on_buffered(data, kind)
            batch = self.joint_reader.take()
            self.stamps.skip_gap("joint_states", [_stamp_or_zero(m) for m, _ in batch])
            for msg, _info in batch:
                self.ingested += 1
                self.on_joint_state(msg)
            infos = self.info_reader.take()
            poses = self.pose_reader.take()
        self.ingested += len(infos) + len(poses)
        self._take_camera_info(infos)
        if poses:
            self.on_object_pose(poses[-1][0])

    def _take_camera_info(self, infos: list) -> None:
        """The newest of the camera_info ``(msg, info)`` taken: the camera model and the stream's newest stamp."""
        if infos:
            self._newest_info_ns = max(self._newest_info_ns, _stamp_or_zero(infos[-1][0]))
            self.on_camera_info(infos[-1][0])

    def on_buffered(self, data, kind: str) -> None:
        """A sensor_msgs/Image (colour, mask or depth), serialised (bytes) or a message object
        (from the in-process bus): stored under its header stamp (lock held). Its header is checked
        first (encoding, size, step and data length, frame; read from the bytes without
        deserialising the pixels), so a malformed image never takes the place of a frame."""
        try:
            header = msgs.serialized_image_header(data) if isinstance(data, (bytes, bytearray)) else data
            msgs.check_image_header(header, self._ENCODINGS[kind], self.p["camera_frame"])
            stamp = header.stamp_ns if isinstance(header, msgs.ImageHeader) else msgs.header_stamp_ns(data)
        except ValueError as e:
            key = f"{kind}_{e.kind.split('_', 1)[1]}" if getattr(e, "kind", None) else f"{kind}_data"
            self.errors.warn(key, f"{kind} skipped: {e}", getattr(e, "value", None))
            return
        # the stamp against its own stream's recent ones: a stray (far future, far past) never
        # takes a place in the buffer; a confirmed jump of the timeline empties it
        v = self.stamps.check(kind, stamp)
        if not v.accepted:
            self.errors.warn(f"{kind}_{v.kind}", f"{kind} skipped: {v.text}")
            return
        if v.verdict == "reset" and v.jump_ns < 0:
            # back: the buffered frames are of a timeline that will not come again. (Forward - all
            # streams ahead at once, also what a flood between two takes of the readers looks like -
            # the buffer is kept: its frames age out.)
            self.get_logger().info(f"{v.text}: frame buffer emptied", throttle_duration_sec=5.0)
            self.frames.clear()
            self.joints.clear()
        if self.camera is not None and (header.width, header.height) != (self.camera.width, self.camera.height):
            self.errors.warn(f"{kind}_size", f"{kind} {header.width}x{header.height} skipped: camera_info says "
                             f"{self.camera.width}x{self.camera.height}")
            return
        self._slot(stamp)[kind] = data

    def _decode(self, kind: str, data: bytes) -> np.ndarray:
        """Buffered serialised image -> array (rgb (H,W,3) uint8 RGB, masks (H,W) bool, depth raw);
        ValueError for an encoding the kind does not accept."""
        from rclpy.serialization import deserialize_message

        msg = deserialize_message(data, Image) if isinstance(data, bytes) else data
        if msg.encoding not in self._ENCODINGS[kind]:
            raise ValueError(f"{kind} image has encoding {msg.encoding!r} (expected one of {list(self._ENCODINGS[kind])})")
        arr = msgs.image_to_numpy(msg)
        self.decoded += 1
        if kind == "rgb":
            return np.ascontiguousarray(arr[..., ::-1] if msg.encoding == "bgr8" else arr)
        if kind == "depth":
            from hp_ros.core.segmentation.image import depth_to_metres

            return depth_to_metres(arr, msg.encoding)
        return arr > 0

    def on_camera_info(self, msg) -> None:
        from hp_ros.core.camera import Camera

        key = (tuple(msg.k), tuple(msg.p), msg.width, msg.height, msg.binning_x, msg.binning_y,
               msg.roi.x_offset, msg.roi.y_offset, msg.roi.width, msg.roi.height)
        if key == getattr(self, "_camera_key", None) and msg.header.frame_id == self._camera_frame_seen:
            return  # the same intrinsics every frame: nothing to rebuild
        try:
            msgs.camera_info_to_intrinsics(msg, self.p["camera_frame"])  # validated at the door
            cam = Camera.from_camera_info(msg)
        except ValueError as e:
            self.errors.reject(e, "camera_info", "camera_info skipped: ")
            return
        self._camera_key, self._camera_frame_seen = key, msg.header.frame_id
        self.camera = cam

    def on_joint_state(self, msg) -> None:
        try:
            self.joints.add(msg)
        except ValueError as e:
            self.errors.reject(e, "joint_states", "joint state skipped: ")

    def on_object_pose(self, msg) -> None:
        try:  # the whole message validated (pose, covariance, frame), not only what is used
            validate.check_covariance(msg.pose.covariance, "object_pose")
            if msg.header.frame_id:
                validate.check_frame(msg.header.frame_id, self.p["camera_frame"], "object_pose")
            self.tracked_pose = (msgs.header_stamp_ns(msg), msgs.pose_to_matrix(msg))
        except (ValueError, TypeError) as e:
            self.errors.reject(e, "object_pose", "object pose ignored: ")

    def usable_stamps(self) -> list:
        self.ingest()
        with self.lock:
            return [s for s, f in self.frames.items() if "rgb" in f and "object_mask" in f]
