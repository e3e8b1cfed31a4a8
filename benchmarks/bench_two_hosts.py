"""Network cost of one RealSense-like RGB-D stream between two hosts: 30 Hz 640x480 colour (rgb8)
+ aligned depth (16UC1) + both camera_info, sent from host A (the replay, standing in for the
camera driver) to one reader on host B, over the veth pair of two simulated hosts
(``hp_ros.veth_hosts``: two network namespaces, a /dev/shm each, nothing else up, no route out).

Transport: the launch file's lab default (``dds_transport`` ``shm_udp``: config/fastdds_shm_udp.xml,
UDPv4 between the hosts), discovery by ``ROS_STATIC_PEERS`` with
``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``, the nodes' QoS (RELIABLE, keep-last 5 for images).

Measured per run: bytes host A's veth end sent while the stream ran (everything: RTPS headers,
fragmentation, retransmissions, discovery, heartbeats, IP/UDP headers), the serialised payload
the reader received, and per topic the reader's latency (receive time minus the writer's source
time, same clock: one machine) and messages received / sent.

LAST line: one JSON object: ``mbit_s_on_wire`` (veth bytes sent by A / stream time),
``mbit_s_payload`` (received serialised messages / stream time), ``wire_over_payload``,
``color_latency_ms_p50/p95``, ``depth_latency_ms_p50/p95``, ``camera_info_latency_ms_p50/p95``,
``received`` (per topic, received / sent over all runs), ``load_avg_1min``.

Usage: ``scripts/run_isolated.sh .venv/bin/python benchmarks/bench_two_hosts.py [--runs 3]``
(root: network namespaces; about 25 s per run).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROBE = r'''
import json, sys, time
import rclpy
from sensor_msgs.msg import CameraInfo, Image
from hp_ros import graph
from hp_ros.nodes.qos import IMAGE_QOS
import signal
out = sys.argv[1]
stop = []
signal.signal(signal.SIGINT, lambda *a: stop.append(1))  # the bench ends the probe after the replay
rclpy.init(signal_handler_options=rclpy.signals.SignalHandlerOptions.NO)
node = rclpy.create_node("hp_ros_two_hosts_probe")
rec = {}  # topic key -> [(source time s, latency ms, serialised bytes)]
def cb(key):
    def on(data, info):
        src = info["source_timestamp"]
        rec.setdefault(key, []).append((src * 1e-9, (info["received_timestamp"] - src) * 1e-6, len(data)))
    return on
for key, (typ, qos) in {"color_image": (Image, IMAGE_QOS), "depth_image": (Image, IMAGE_QOS),
                        "color_info": (CameraInfo, IMAGE_QOS), "depth_info": (CameraInfo, IMAGE_QOS)}.items():
    node.create_subscription(typ, graph.CAMERA_TOPICS[key], cb(key), qos, raw=True)
print("ready", flush=True)
while not stop:
    rclpy.spin_once(node, timeout_sec=0.1)
json.dump(rec, open(out, "w"))
'''


def udp_drops(hosts, host: str) -> dict:
    """Host's kernel counters of lost datagrams (``/proc/net/snmp``): ``RcvbufErrors`` (the
    receiving socket's buffer was full) and ``ReasmFails`` (IP fragments never reassembled)."""
    out = subprocess.run(hosts.command(host, ["cat", "/proc/net/snmp"]), capture_output=True, text=True).stdout
    rows = {}
    for ln in out.splitlines():
        key, _, rest = ln.partition(":")
        rows.setdefault(key, []).append(rest.split())
    udp, ip = dict(zip(*rows["Udp"])), dict(zip(*rows["Ip"]))
    return {"RcvbufErrors": int(udp["RcvbufErrors"]), "ReasmFails": int(ip["ReasmFails"])}


def run_once(hosts, bag: Path, work: Path, base_env: dict, sent: int, profile: str | None = None) -> dict:
    """One replay of ``bag``'s camera topics from host A to the probe on host B (``profile``: a Fast
    DDS profile file instead of the lab default)."""
    from hp_ros import graph

    env = {h: hosts.ros_env(h, base_env) for h in ("A", "B")}
    for e in env.values():
        if profile:
            e["FASTDDS_DEFAULT_PROFILES_FILE"] = str(profile)

    out = work / f"probe-{time.monotonic_ns()}.json"
    log = open(work / "probe.log", "ab")
    probe = subprocess.Popen(hosts.command("B", [sys.executable, "-c", PROBE, str(out)]), env=env["B"],
                             stdout=subprocess.PIPE, stderr=log, text=True)
    if probe.stdout.readline().strip() != "ready":  # its reader is there before the writers come
        raise RuntimeError(f"probe failed to start: {(work / 'probe.log').read_text()[-2000:]}")
    tx0, drops0 = hosts.veth_bytes("A")[1], udp_drops(hosts, "B")
    replay = subprocess.run(hosts.command("A", [sys.executable, "-m", "hp_ros.tools.replay", str(bag), "--topics",
                                                *graph.CAMERA_TOPICS.values(), "--wait-subscribers", "4",
                                                "--wait-timeout", "60"]),
                            env=env["A"], capture_output=True, text=True)
    time.sleep(1.0)  # trailing repairs and acknowledgements
    tx1, drops1 = hosts.veth_bytes("A")[1], udp_drops(hosts, "B")
    probe.send_signal(signal.SIGINT)
    probe.wait(timeout=60)
    probe.stdout.close()
    log.close()
    if replay.returncode != 0 or not out.exists():
        raise RuntimeError(f"replay exit {replay.returncode}: {replay.stderr[-2000:]}\nprobe: "
                           f"{(work / 'probe.log').read_text()[-2000:]}")
    if "warning: fewer than" in replay.stderr:
        print(f"  replay: {replay.stderr.strip()[-300:]}", flush=True)
    rec = json.loads(out.read_text())
    src = [s for v in rec.values() for s, _, _ in v]
    span = (max(src) - min(src)) + 1.0 / 30.0 if src else float("nan")
    return {"rec": rec, "wire_bytes": tx1 - tx0, "span_s": span, "drops": {k: drops1[k] - drops0[k] for k in drops0}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="runs (pooled)")
    ap.add_argument("--duration", type=float, default=6.0, help="seconds of stream per run")
    ap.add_argument("--profile", default=None, help="a Fast DDS profile file to measure instead of "
                                                    "config/fastdds_shm_udp.xml (e.g. a lab's own)")
    args = ap.parse_args()
    from hp_ros import veth_hosts
    from hp_ros.core import synth
    from hp_ros.ros_process import loopback_env

    reason = veth_hosts.unavailable_reason()
    if reason:
        print(f"bench_two_hosts needs two network namespaces: {reason}", file=sys.stderr)
        return 2
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores at start", flush=True)
    runs = []
    with tempfile.TemporaryDirectory(prefix="hp_ros_bench_two_hosts_") as tmp:
        work = Path(tmp)
        seq = synth.generate_sequence(synth.SynthConfig(object="builtin:cracker_box", duration_s=args.duration,
                                                        seed=0))
        synth.write_sequence_bag(seq, work / "bag")
        sent = len(seq.frame_stamps_ns)
        base = loopback_env()  # domain id of the run; veth_hosts.ros_env turns it into a host's
        with veth_hosts.TwoHosts() as hosts:
            for i in range(args.runs):
                r = run_once(hosts, work / "bag", work, base, sent, args.profile)
                runs.append(r)
                payload = sum(b for v in r["rec"].values() for _, _, b in v)
                got = ", ".join(f"{k} {len(v)}/{sent}" for k, v in sorted(r["rec"].items()))
                print(f"run {i}: {r['wire_bytes'] / 1e6:.1f} MB on the wire, {payload / 1e6:.1f} MB payload in "
                      f"{r['span_s']:.2f} s; host B dropped {r['drops']}; received {got}", flush=True)
    span = sum(r["span_s"] for r in runs)
    wire = sum(r["wire_bytes"] for r in runs)
    payload = sum(b for r in runs for v in r["rec"].values() for _, _, b in v)
    summary = {"mbit_s_on_wire": round(8e-6 * wire / span, 1), "mbit_s_payload": round(8e-6 * payload / span, 1),
               "wire_over_payload": round(wire / max(payload, 1), 3)}
    for key, name in (("color_image", "color"), ("depth_image", "depth"), ("color_info", "camera_info")):
        lat = np.asarray([x for r in runs for _, x, _ in r["rec"].get(key, [])], float)
        p50, p95 = np.percentile(lat, [50, 95]) if lat.size else (np.nan, np.nan)
        summary[f"{name}_latency_ms_p50"] = round(float(p50), 1)
        summary[f"{name}_latency_ms_p95"] = round(float(p95), 1)
    summary["received"] = {k: f"{sum(len(r['rec'].get(k, [])) for r in runs)}/{sent * len(runs)}"
                           for k in ("color_image", "depth_image", "color_info", "depth_info")}
    summary["udp_drops_host_b"] = {k: sum(r["drops"][k] for r in runs) for k in runs[0]["drops"]}
    summary["load_avg_1min"] = round(os.getloadavg()[0], 2)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
