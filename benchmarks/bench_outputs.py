"""CPU per frame of the tracking node's lab outputs (/hp_ros/detections, /hp_ros/contacts,
/hp_ros/markers) when subscribed, and when not.

The outputs (:class:`hp_ros.nodes.lab_outputs.LabOutputs`) run on a stand-in node whose publishers
report one subscriber (or none) and serialise each message as rclpy's publish does
(``rclpy.serialization.serialize_message``: the Python -> C conversion and the CDR encoding), over
the frames of a synthetic sequence at the true pose with a filter-like covariance, the frame clock
advancing 1/30 s per frame (the mesh marker is re-sent every 2 s of it).

LAST line: one JSON object: ``{output}_ms`` (thread CPU per frame, mean over the frames) for
``detections``, ``contacts``, ``markers``, ``all`` (the three subscribed) and ``none`` (nobody
subscribed), and ``contact_map_ms`` (the contact map alone).

Usage: ``.venv/bin/python benchmarks/bench_outputs.py [--seconds 6] [--repeats 3]``
"""
from __future__ import annotations

import argparse
import json
import os
import time
import types

import numpy as np
import torch


class _Pub:
    def __init__(self, subscribed: bool):
        from rclpy.serialization import serialize_message

        self.subscribed, self.serialize, self.bytes = subscribed, serialize_message, 0

    def get_subscription_count(self):
        return 1 if self.subscribed else 0

    def publish(self, msg):
        self.bytes += len(self.serialize(msg))


class _Node:
    def __init__(self, topics: set):
        self.topics, self.pubs = topics, {}

    def create_publisher(self, msg_type, topic, qos):
        self.pubs[topic] = _Pub(topic in self.topics)
        return self.pubs[topic]

    def get_logger(self):
        return types.SimpleNamespace(warning=print)

    def get_clock(self):
        from builtin_interfaces.msg import Time

        return types.SimpleNamespace(now=lambda: types.SimpleNamespace(to_msg=lambda: Time(sec=1)))


def run(seq, hand, obj, sdf, topics: set, repeats: int) -> tuple[float, dict]:
    """Mean thread CPU [ms] per frame of the outputs with ``topics`` subscribed; bytes per topic."""
    from hp_ros.core.ekf import FrameResult, TrackState
    from hp_ros.nodes import lab_outputs
    from hp_ros.nodes.params import COMMON_PARAMS
    from hp_ros.nodes.tracking_params import OWN_PARAMS

    p = {k: v.default for k, v in {**COMMON_PARAMS, **OWN_PARAMS}.items()}
    node = _Node(topics)
    lab = lab_outputs.LabOutputs(node, hand, obj, sdf, p)
    cov = np.diag([2e-4 ** 2] * 3 + [3e-3 ** 2] * 3)
    clock = [0.0]
    lab_outputs.time = types.SimpleNamespace(monotonic=lambda: clock[0])  # the frame clock, not the wall
    times = []
    for _ in range(repeats):
        for k in range(seq.num_frames):
            r = FrameResult(int(seq.frame_stamps_ns[k]), TrackState.TRACKING, False, seq.T_cam_obj[k], cov,
                            score=0.9, q=seq.joint_positions[min(k * 3, len(seq.joint_positions) - 1)],
                            T_cam_hand=seq.T_cam_hand_published)
            clock[0] = k / 30.0
            c0 = time.thread_time()
            lab.publish(r, posed=True, K=seq.K)
            times.append(time.thread_time() - c0)
    lab_outputs.time = time
    return 1e3 * float(np.mean(times)), {t: p.bytes for t, p in node.pubs.items() if p.bytes}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from hp_ros import graph
    from hp_ros.core.contact_map import ContactMapper
    from hp_ros.core.hand import HandModel
    from hp_ros.core.objects import ObjectModel
    from hp_ros.core.sdf import MeshSDF
    from hp_ros.core.synth import SynthConfig, generate_sequence

    seq = generate_sequence(SynthConfig(duration_s=args.seconds, seed=0, render=False))
    hand, obj = HandModel.default(), ObjectModel.builtin("cracker_box")
    sdf = MeshSDF(obj.vertices, obj.faces)
    T = graph.TOPICS
    out = {}
    for name, topics in (("none", set()), ("detections", {T["detections"]}), ("contacts", {T["contacts"]}),
                         ("markers", {T["markers"]}), ("all", {T["detections"], T["contacts"], T["markers"]})):
        ms, sent = run(seq, hand, obj, sdf, topics, args.repeats)
        out[f"{name}_ms"] = round(ms, 4)
        kb = {t.rsplit("/", 1)[-1]: round(b / 1024 / (args.repeats * seq.num_frames), 1) for t, b in sent.items()}
        print(f"{name:10s} subscribed: {ms:.3f} ms CPU per frame; kB per frame {kb}")
    mapper = ContactMapper.for_object(hand, obj, sdf)
    c = []
    for k in range(seq.num_frames):
        c0 = time.thread_time()
        mapper.compute(seq.joint_positions[k * 3], seq.T_cam_hand_published, seq.T_cam_obj[k])
        c.append(time.thread_time() - c0)
    out["contact_map_ms"] = round(1e3 * float(np.mean(c)), 4)
    print(f"contact map alone: {out['contact_map_ms']:.3f} ms CPU per frame; load average {os.getloadavg()[0]:.2f}")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
