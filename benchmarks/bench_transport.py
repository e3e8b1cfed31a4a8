"""DDS delivery of the camera + hand streams to one reader: replay with one participant for every
topic versus one participant per topic (``hp-ros replay --participants``).

A synthetic 6 s sequence (640x480 colour + depth at 30 Hz, joint states at 100 Hz) is replayed at
1.0x into a probe process that subscribes to colour, depth, colour camera_info and joint states
with the nodes' QoS and records, per message, DDS latency (reader's receive time minus writer's
source time, both from the middleware). Transport: the loopback Fast DDS profile
(config/fastdds_loopback_shm.xml: shared memory + UDP on 127.0.0.1).

Printed per mode: messages received / sent and latency p50 / p95 / max per topic.
LAST line: one JSON object with ``joint_states_p95_ms_one``, ``joint_states_p95_ms_per_topic``,
``camera_info_p95_ms_one``, ``camera_info_p95_ms_per_topic``, ``color_p95_ms_one``,
``color_p95_ms_per_topic`` and the received counts.

Usage: ``scripts/run_isolated.sh .venv/bin/python benchmarks/bench_transport.py [--runs 2]``
(about 30 s per run).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TOPICS = {"joint_states": "/joint_states", "camera_info": "/camera/camera/color/camera_info",
          "color": "/camera/camera/color/image_raw", "depth": "/camera/camera/aligned_depth_to_color/image_raw"}

PROBE = r'''
import json, sys, time
import rclpy
from sensor_msgs.msg import CameraInfo, Image, JointState
from hp_ros.nodes.qos import IMAGE_QOS, STATE_QOS
topics, out, seconds = json.loads(sys.argv[1]), sys.argv[2], float(sys.argv[3])
rclpy.init()
node = rclpy.create_node("hp_ros_transport_probe")
rec = {k: [] for k in topics}
def cb(k):
    return lambda m, info: rec[k].append((info["received_timestamp"] - info["source_timestamp"]) / 1e6)
types = {"joint_states": (JointState, STATE_QOS), "camera_info": (CameraInfo, STATE_QOS),
         "color": (Image, IMAGE_QOS), "depth": (Image, IMAGE_QOS)}
for k, t in topics.items():
    node.create_subscription(types[k][0], t, cb(k), types[k][1])
t0 = time.monotonic()
while time.monotonic() - t0 < seconds:
    rclpy.spin_once(node, timeout_sec=0.1)
json.dump(rec, open(out, "w"))
'''


def run_once(bag: Path, participants: str, work: Path, env: dict) -> dict:
    out = work / f"probe-{participants}-{time.monotonic_ns()}.json"
    probe = subprocess.Popen([sys.executable, "-c", PROBE, json.dumps(TOPICS), str(out), "25"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    subprocess.run([sys.executable, "-m", "hp_ros.tools.replay", str(bag), "--participants", participants,
                    "--topics", *TOPICS.values(), "/tf_static", "--wait-subscribers", "4", "--wait-timeout", "20",
                    "--quiet"], env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    probe.wait(timeout=60)
    return json.loads(out.read_text())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=2, help="runs per mode (pooled)")
    args = ap.parse_args()
    from hp_ros.core import synth
    from hp_ros.ros_process import loopback_env

    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores at start", flush=True)
    env = loopback_env(base={**os.environ, "HP_ROS_DDS_TRANSPORT": "loopback"})
    summary = {}
    with tempfile.TemporaryDirectory(prefix="hp_ros_bench_transport_") as tmp:
        work = Path(tmp)
        seq = synth.generate_sequence(synth.SynthConfig(object="builtin:cracker_box", duration_s=6.0, seed=0))
        synth.write_sequence_bag(seq, work / "bag")
        sent = {"joint_states": len(seq.joint_stamps_ns), "camera_info": len(seq.frame_stamps_ns),
                "color": len(seq.frame_stamps_ns), "depth": len(seq.frame_stamps_ns)}
        for mode in ("one", "per-topic"):
            pooled = {k: [] for k in TOPICS}
            for _ in range(args.runs):
                for k, v in run_once(work / "bag", mode, work, env).items():
                    pooled[k].extend(v)
            for k, lat in pooled.items():
                a = np.asarray(lat, float)
                p50, p95, mx = (np.percentile(a, [50, 95, 100]) if a.size else (np.nan,) * 3)
                print(f"[{mode}] {k}: {a.size}/{sent[k] * args.runs} received, latency p50 {p50:.1f} ms, "
                      f"p95 {p95:.1f} ms, max {mx:.1f} ms", flush=True)
                key = mode.replace("-", "_")
                if k != "depth":
                    summary[f"{k}_p95_ms_{key}"] = round(float(p95), 1)
                summary[f"{k}_received_{key}"] = f"{a.size}/{sent[k] * args.runs}"
    summary["load_avg_1min"] = round(os.getloadavg()[0], 2)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
