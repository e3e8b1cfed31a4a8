"""Pre-flight check of a recorded bag before ``hp-ros replay`` (``hp-ros check-bag BAG``), ROS-free.

A lab's first real bag fails for a handful of reasons, each of which the nodes would only report
frame by frame in their logs and /diagnostics. This reads the first ``seconds`` of the bag and
reports, per finding, ERROR (the graph cannot track: missing colour / camera_info / joint states,
an unsupported encoding, no camera->hand transform), WARN (it runs, worse: no aligned depth, depth
not aligned to colour, clocks apart, low rates) or OK:

* topics: the colour image and its camera_info, the aligned depth image, /joint_states, /tf_static
  (or the ``camera_to_hand`` parameter), with their types and rates;
* encodings: colour rgb8 / bgr8 / rgba8 / bgra8 / mono8, depth 16UC1 (mm) / 32FC1 (m);
* frames: camera_info and images in the camera frame; the depth camera_info equal to the colour one
  (aligned depth); /tf_static holds a chain from the camera frame to the hand base frame;
* joint names: Wonik (``ah_joint00``...) or SimLab (``joint_0.0``...) naming, 16 joints;
* clocks: per topic the median of (record time - header stamp); joint states and images stamped by
  different hosts' clocks show different offsets (the nodes pair them by stamp: more than
  ``max_clock_gap`` apart is a WARN); every colour frame has a depth frame within ``depth_max_dt``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hp_ros import graph

__all__ = ["Finding", "check_bag", "OK", "WARN", "ERROR"]

OK, WARN, ERROR = "OK", "WARN", "ERROR"
COLOR_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8")
DEPTH_ENCODINGS = ("16UC1", "32FC1")


@dataclass
class Finding:
    level: str
    what: str
    text: str

    def __str__(self) -> str:
        return f"[{self.level:5s}] {self.what}: {self.text}"


def _read(path, seconds: float, topics: set) -> dict:
    """topic -> list of (record ns, message) of the first ``seconds`` (images: only their headers
    and first few messages are kept)."""
    from hp_ros.io.bag import _open_reader

    out: dict = {}
    reader = _open_reader(path)
    with reader:
        conns = [c for c in reader.connections if c.topic in topics]
        stop = reader.start_time + int(seconds * 1e9) if reader.message_count else None
        for conn, t, data in reader.messages(connections=conns, stop=stop):
            msg = reader.deserialize(data, conn.msgtype)
            lst = out.setdefault(conn.topic, [])
            if conn.msgtype == "sensor_msgs/msg/Image" and len(lst) >= 3:
                msg = type("Header", (), {"header": msg.header, "encoding": msg.encoding})  # drop the pixels
            lst.append((int(t), msg))
    return out


def _stamp(msg) -> int:
    return int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)


def _rate(items) -> float:
    if len(items) < 2:
        return 0.0
    s = sorted(_stamp(m) for _, m in items)
    return (len(s) - 1) / max((s[-1] - s[0]) * 1e-9, 1e-9)


def _tf_chain(items, a: str, b: str) -> bool:
    """Frames ``a`` and ``b`` connected by the transforms of the /tf_static messages."""
    adj: dict = {}
    for _, m in items:
        for t in m.transforms:
            adj.setdefault(t.header.frame_id, set()).add(t.child_frame_id)
            adj.setdefault(t.child_frame_id, set()).add(t.header.frame_id)
    seen, todo = {a}, [a]
    while todo:
        for n in adj.get(todo.pop(), ()):
            if n not in seen:
                seen.add(n)
                todo.append(n)
    return b in seen


def check_bag(path, seconds: float = 10.0, camera_namespace: str = "/camera/camera",
              joint_states: str = graph.JOINT_STATES, camera_frame: str = graph.CAMERA_FRAME,
              hand_frame: str = "ah_palm_link", camera_to_hand_param: bool = False,
              max_clock_gap: float = 0.02, depth_max_dt: float = 0.02) -> list:
    """Findings (list of :class:`Finding`) for the bag at ``path`` (see the module doc)."""
    from hp_ros.core.hand import JointNaming
    from hp_ros.io.bag import bag_summary

    ns = camera_namespace.rstrip("/")
    topics = {k: ns + v[len("/camera/camera"):] for k, v in graph.CAMERA_TOPICS.items()}
    summary = bag_summary(path)
    f = [Finding(OK, "bag", f"{summary.duration_s:.1f} s, {summary.message_count} messages ({summary.storage})")]
    need = {topics["color_image"]: ("sensor_msgs/msg/Image", ERROR), topics["color_info"]: ("sensor_msgs/msg/CameraInfo", ERROR),
            topics["depth_image"]: ("sensor_msgs/msg/Image", WARN), topics["depth_info"]: ("sensor_msgs/msg/CameraInfo", WARN),
            joint_states: ("sensor_msgs/msg/JointState", ERROR),
            "/tf_static": ("tf2_msgs/msg/TFMessage", OK if camera_to_hand_param else ERROR)}
    for topic, (typ, level) in need.items():
        got = summary.topics.get(topic)
        if got is None:
            f.append(Finding(level, topic, "missing" + (" (the depth fit and the depth fallback are off)"
                                                         if level == WARN else "")))
        elif got != typ:
            f.append(Finding(ERROR, topic, f"type {got}, expected {typ}"))
    data = _read(path, seconds, set(need))
    f += _check_images(data, topics, camera_frame)
    f += _check_joints(data.get(joint_states, []), joint_states, JointNaming)
    if "/tf_static" in data:
        ok = _tf_chain(data["/tf_static"], camera_frame, hand_frame)
        f.append(Finding(OK if ok else (WARN if camera_to_hand_param else ERROR), "/tf_static",
                         f"{'a' if ok else 'no'} chain {camera_frame} -> {hand_frame}"
                         + ("" if ok else ": publish the calibration (static_transform_publisher) or set "
                                          "camera_to_hand")))
    f += _check_clocks(data, topics, joint_states, max_clock_gap, depth_max_dt)
    return f


def _check_images(data: dict, topics: dict, camera_frame: str) -> list:
    f = []
    for key, encodings in (("color_image", COLOR_ENCODINGS), ("depth_image", DEPTH_ENCODINGS)):
        items = data.get(topics[key], [])
        if not items:
            continue
        enc = sorted({m.encoding for _, m in items[:3]})
        frames = sorted({m.header.frame_id for _, m in items[:3]})
        bad = [e for e in enc if e not in encodings]
        f.append(Finding(ERROR if bad else OK, topics[key], f"encoding {', '.join(enc)}"
                         + (f": not one of {list(encodings)}" if bad else "") + f", {_rate(items):.1f} Hz"))
        if frames != [camera_frame]:
            hint = " (depth aligned to colour: align_depth.enable:=true)" if key == "depth_image" else ""
            f.append(Finding(ERROR, topics[key], f"frame_id {frames}, expected {camera_frame}{hint}"))
    infos = {k: data.get(topics[k], []) for k in ("color_info", "depth_info")}
    if infos["color_info"]:
        m = infos["color_info"][0][1]
        if m.header.frame_id != camera_frame:
            f.append(Finding(ERROR, topics["color_info"], f"frame_id {m.header.frame_id!r}, expected {camera_frame}"))
        if not np.any(np.asarray(m.k, float)):
            f.append(Finding(ERROR, topics["color_info"], "K is all zeros: the camera is not calibrated"))
    if infos["color_info"] and infos["depth_info"]:
        kc, kd = (np.asarray(infos[k][0][1].k, float) for k in ("color_info", "depth_info"))
        same = np.allclose(kc, kd, rtol=1e-6, atol=1e-6)
        f.append(Finding(OK if same else WARN, topics["depth_info"], "same intrinsics as colour (aligned)" if same
                         else "intrinsics differ from colour: the depth is not aligned (align_depth.enable:=true)"))
    return f


def _check_joints(items: list, topic: str, naming_cls) -> list:
    if not items:
        return []
    names = list(items[0][1].name)
    naming = naming_cls.detect(names)
    rate = _rate(items)
    f = [Finding(OK if naming else ERROR, topic, f"{len(names)} joints, " + (
        f"{naming.scheme} naming (joint_naming:={naming.scheme})" if naming
        else f"names {names[:3]}... match neither ah_joint00..33 (wonik) nor joint_0.0..15.0 (simlab)"))]
    f.append(Finding(OK if rate >= 50 else WARN, topic, f"{rate:.0f} Hz" + ("" if rate >= 50 else
                     " (the tracker predicts through each joint state: expect ~100 Hz)")))
    return f


def _check_clocks(data: dict, topics: dict, joint_states: str, max_gap: float, depth_max_dt: float) -> list:
    """Record time minus header stamp per topic; images vs joint states; colour/depth pairing."""
    f, offset = [], {}
    for topic in (topics["color_image"], topics["depth_image"], joint_states):
        items = data.get(topic, [])
        if items:
            offset[topic] = float(np.median([(t - _stamp(m)) * 1e-9 for t, m in items]))
    if topics["color_image"] in offset and joint_states in offset:
        gap = offset[topics["color_image"]] - offset[joint_states]
        text = ", ".join(f"{k} {1e3 * v:.1f} ms" for k, v in offset.items())
        f.append(Finding(OK if abs(gap) <= max_gap else WARN, "clocks", f"record time - stamp: {text}" + (
            "" if abs(gap) <= max_gap else f"; images and joint states {1e3 * gap:+.0f} ms apart: different hosts' "
                                           "clocks? (chrony/PTP; the nodes pair them by stamp)")))
    col, dep = data.get(topics["color_image"], []), data.get(topics["depth_image"], [])
    if col and dep:
        ds = np.sort([_stamp(m) for _, m in dep])
        cs = np.array([_stamp(m) for _, m in col])
        i = np.clip(np.searchsorted(ds, cs), 1, len(ds) - 1)
        dt = np.minimum(np.abs(ds[i] - cs), np.abs(ds[i - 1] - cs)) * 1e-9
        frac = float(np.mean(dt <= depth_max_dt))
        f.append(Finding(OK if frac >= 0.9 else WARN, "colour/depth pairing", f"{100 * frac:.0f} % of colour frames "
                         f"have a depth frame within {1e3 * depth_max_dt:.0f} ms"))
    return f
