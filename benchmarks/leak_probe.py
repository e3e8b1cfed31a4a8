"""Issue 28 leak probe: where does a burst of malformed images leave memory behind?

One subscriber process (this one) and, by default, one publisher process (``--pub child``, as in
the graph: DDS between processes; ``--pub self`` publishes from this process, Fast DDS then
delivers intra-process). The publisher sends ``--rounds`` rounds of ``--n`` sensor_msgs/Image of
one ``--kind``; after each round this process waits for the reader to drain and records its
memory: VmRSS, glibc's bytes in use (mallinfo2 uordblks + hblkhd), after ``gc.collect()`` and
after ``malloc_trim(0)``. Growth from round 1 to the last round is a leak per message; growth in
round 1 only is a high-water mark (pools, caches).

Reader (``--reader``): ``callback`` (a subscription run by an executor thread), ``callback_raw``,
``take`` / ``take_raw`` (hp_ros.nodes.deferred.DeferredReader.take from a worker thread every
``--take-period`` s, as the nodes do).

Run it isolated (loopback-only DDS, private domain):
  PYTHONPATH=. nice -n 19 /work/main/scripts/run_isolated.sh /work/main/.venv/bin/python \\
      benchmarks/leak_probe.py --kind huge --reader take_raw
``--matrix`` runs every kind x reader (one subprocess each) and prints a table; the last line
printed is one JSON object.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import subprocess
import sys
import threading
import time

S = 1_000_000_000
FRAME = "camera_color_optical_frame"
ENCODINGS = ["yuv422", "bayer_rggb8", "", "RGB8", "16SC1", "64FC1", "rgb8\x00", "jpeg", "8UC3", "mono16"]


# ----------------------------------------------------------------------------- messages

def _image(w, h, enc="rgb8", bpp=3, data_len=None, step=None, frame=FRAME, stamp=1_700_000_000 * S):
    from sensor_msgs.msg import Image

    m = Image()
    m.header.frame_id = frame
    m.header.stamp.sec, m.header.stamp.nanosec = divmod(stamp, S)
    m.width, m.height, m.encoding = w, h, enc
    m.step = w * bpp if step is None else step
    m.data = bytes(w * h * bpp if data_len is None else data_len)
    return m


def build(kind: str, i: int, rng):
    """The i-th message of ``kind`` (kinds after test/fuzz_messages.bad_image, plus controls)."""
    sw, sh = 8 + int(rng.integers(8)), 6 + int(rng.integers(6))  # the generator's small sizes
    if kind == "valid_small":          # control: a fixed small valid image
        return _image(12, 9)
    if kind == "valid_full":           # control: the camera's size, valid (case 0 minus the stamp)
        return _image(640, 480)
    if kind == "valid_full_depth":
        return _image(640, 480, "16UC1", 2)
    if kind == "enc":                  # case 1: unknown encoding, endless variety
        return _image(sw, sh, ENCODINGS[int(rng.integers(len(ENCODINGS)))] + str(int(rng.integers(10_000))))
    if kind == "size":                 # case 2: small sizes varying per message
        return _image(sw, sh)
    if kind == "huge":                 # case 3: 100000 x 100000 declared, small data
        m = _image(sw, sh)
        m.width, m.height, m.step = 100_000, 100_000, 300_000
        return m
    if kind == "short":                # case 4: data half of step * height
        return _image(sw, sh, data_len=sw * sh * 3 // 2)
    if kind == "step1":                # case 5
        return _image(sw, sh, step=1)
    if kind == "frame":                # case 6: another frame, varying name
        return _image(sw, sh, frame="somewhere_else_" + str(int(rng.integers(1000))))
    if kind == "nan32":                # case 7 (depth): 32FC1
        return _image(sw, sh, "32FC1", 4)
    if kind == "empty":
        return _image(sw, sh, data_len=0)
    if kind == "mix_full_small":       # size variation only: 1 full-size valid image in 8, else small valid
        return _image(640, 480) if i % 8 == 0 else _image(sw, sh)
    if kind == "mix_full_small_fixed":  # as above, the small ones one fixed size
        return _image(640, 480) if i % 8 == 0 else _image(12, 9)
    if kind == "mix_full_half":        # two large sizes, both above one UDP datagram
        return _image(640, 480) if i % 2 == 0 else _image(320, 240)
    if kind == "mix_60k_small":        # a sample under one datagram (~60 KB) 1 in 8, else small
        return _image(140, 140) if i % 8 == 0 else _image(sw, sh)
    if kind == "mix_200k_small":       # 200 KB 1 in 8, else small
        return _image(260, 260) if i % 8 == 0 else _image(sw, sh)
    if kind in ("gen_color", "gen_depth"):  # the fuzz test's own generator
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "test"))
        import fuzz_messages as F

        return F.bad_image(lambda n: int(rng.integers(n)), 1_700_000_000 * S, depth=kind == "gen_depth")
    raise ValueError(kind)


KINDS = ["valid_small", "valid_full", "enc", "size", "huge", "short", "step1", "frame", "nan32", "empty",
         "mix_full_small", "mix_full_small_fixed", "mix_full_half", "mix_60k_small", "mix_200k_small", "gen_color", "gen_depth"]


# ----------------------------------------------------------------------------- memory

_libc = ctypes.CDLL("libc.so.6")


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


_libc.mallinfo2.restype = _Mallinfo2


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def in_use_mb() -> float:
    m = _libc.mallinfo2()
    return (m.uordblks + m.hblkhd) / 2 ** 20


def snapshot() -> dict:
    out = {"rss": rss_mb(), "inuse": in_use_mb()}
    gc.collect()
    out["rss_gc"] = rss_mb()
    _libc.malloc_trim(0)
    out["rss_trim"], out["inuse_trim"] = rss_mb(), in_use_mb()
    return {k: round(v, 2) for k, v in out.items()}


# ----------------------------------------------------------------------------- roles

QOS_DEPTH_PUB = 50


def _qos(depth, best_effort=False):
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(depth=depth, history=HistoryPolicy.KEEP_LAST,
                      reliability=ReliabilityPolicy.BEST_EFFORT if best_effort else ReliabilityPolicy.RELIABLE)


class Publisher:
    def __init__(self, node, kind, pool, seed=0, depth=QOS_DEPTH_PUB):
        import numpy as np
        from sensor_msgs.msg import Image

        self.pub = node.create_publisher(Image, "/probe/image", _qos(depth))
        rng = np.random.default_rng(seed)
        self.msgs = [build(kind, i, rng) for i in range(pool)]

    def round(self, n, rate):
        t0 = time.monotonic()
        for i in range(n):
            self.pub.publish(self.msgs[i % len(self.msgs)])
            lag = t0 + (i + 1) / rate - time.monotonic()
            if lag > 0:
                time.sleep(lag)


def run_pub(a) -> None:
    """Child publisher: waits for a subscriber, then one round per 'go' line on stdin."""
    import rclpy

    rclpy.init()
    node = rclpy.create_node("leak_probe_pub")
    p = Publisher(node, a.kind, a.pool, a.seed, a.pub_depth)
    while p.pub.get_subscription_count() == 0:
        time.sleep(0.02)
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() != "go":
            break
        p.round(a.n, a.rate)
        print("done", flush=True)
    node.destroy_node()
    rclpy.shutdown()


def _child_env() -> dict:
    """This environment without a preloaded heap profiler (heaptrack traces this process only)."""
    return {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "DUMP_HEAPTRACK_OUTPUT")}


def run_sub(a) -> dict:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import Image

    from hp_ros.nodes.deferred import DeferredReader

    rclpy.init()
    node = rclpy.create_node("leak_probe_sub")
    got = [0]
    lock = threading.Lock()
    stop = threading.Event()
    threads = []
    raw = a.reader.endswith("_raw")
    if a.reader.startswith("callback"):
        def cb(msg):
            with lock:
                got[0] += 1
        node.create_subscription(Image, "/probe/image", cb, _qos(a.depth, a.best_effort), raw=raw)
        ex = SingleThreadedExecutor()
        ex.add_node(node)
        threads.append(threading.Thread(target=lambda: [ex.spin_once(0.05) for _ in iter(stop.is_set, True)],
                                        daemon=True))
    else:
        reader = DeferredReader(node, None, Image, "/probe/image", depth=a.depth, raw=raw,
                                reliable=not a.best_effort)

        def worker():
            while not stop.is_set():
                n = len(reader.take())
                with lock:
                    got[0] += n
                time.sleep(a.take_period)
        threads.append(threading.Thread(target=worker, daemon=True))
    for t in threads:
        t.start()
    child = pub = None
    if a.pub == "child":
        child = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--role", "pub", "--kind", a.kind,
                                  "--n", str(a.n), "--rate", str(a.rate), "--pool", str(a.pool),
                                  "--seed", str(a.seed), "--pub-depth", str(a.pub_depth)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                 env=_child_env())
        assert child.stdout.readline().strip() == "ready"
    else:
        pub = Publisher(node, a.kind, a.pool, a.seed, a.pub_depth)
        while pub.pub.get_subscription_count() == 0:
            time.sleep(0.02)
    bg = None
    if a.background:
        bg = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--role", "pub", "--kind", a.background,
                               "--n", "100000000", "--rate", str(a.background_rate), "--pool", "4",
                               "--seed", str(a.seed + 1)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                 env=_child_env())
        assert bg.stdout.readline().strip() == "ready"
        bg.stdin.write("go\n")
        bg.stdin.flush()
        time.sleep(2.0)  # its first samples in, pools at their size
    time.sleep(0.5)
    snaps = [snapshot()]
    received = []
    for _ in range(a.rounds):
        with lock:
            before = got[0]
        if child is not None:
            child.stdin.write("go\n")
            child.stdin.flush()
            assert child.stdout.readline().strip() == "done"
        else:
            pub.round(a.n, a.rate)
        # drain: until nothing new arrives for 0.5 s
        last, t_last = -1, time.monotonic()
        while time.monotonic() - t_last < 0.5:
            if bg is not None:  # a steady stream besides: no quiet moment, wait a fixed 1 s
                time.sleep(1.0)
                with lock:
                    last = got[0]
                break
            time.sleep(0.1)
            with lock:
                cur = got[0]
            if cur != last:
                last, t_last = cur, time.monotonic()
        received.append(last - before)
        snaps.append(snapshot())
        if a.pause and len(snaps) == 2:  # after round 1: time to attach a profiler (heaptrack -p PID)
            print(f"pause pid={os.getpid()}", file=sys.stderr, flush=True)
            time.sleep(a.pause)
    if child is not None:
        child.stdin.close()
        child.wait(10)
    if bg is not None:
        bg.kill()
        bg.wait(10)
    stop.set()
    for t in threads:
        t.join(2)
    size = len(build(a.kind, 0, __import__("numpy").random.default_rng(a.seed)).data)
    d = lambda k, i, j: round(snaps[j][k] - snaps[i][k], 2)  # noqa: E731
    return {"kind": a.kind, "reader": a.reader, "pub": a.pub, "background": a.background,
            "dds": os.environ.get("HP_ROS_DDS_TRANSPORT"), "n": a.n, "rounds": a.rounds, "depth": a.depth, "best_effort": a.best_effort, "pub_depth": a.pub_depth,
            "data_bytes_msg0": size, "received": received,
            "rss0": snaps[0]["rss"], "d_rss_r1": d("rss", 0, 1), "d_rss_last": d("rss", 1, -1),
            "d_inuse_r1": d("inuse_trim", 0, 1), "d_inuse_last": d("inuse_trim", 1, -1),
            "d_rss_trim_total": d("rss_trim", 0, -1), "snaps": snaps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--role", default="sub", choices=["sub", "pub"])
    ap.add_argument("--kind", default="gen_color", choices=KINDS)
    ap.add_argument("--reader", default="take_raw", choices=["callback", "callback_raw", "take", "take_raw"])
    ap.add_argument("--pub", default="child", choices=["child", "self"])
    ap.add_argument("--n", type=int, default=5000, help="messages per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rate", type=float, default=1000.0, help="messages/s")
    ap.add_argument("--depth", type=int, default=5, help="reader history depth (IMAGE_QOS: 5)")
    ap.add_argument("--take-period", type=float, default=0.01)
    ap.add_argument("--pool", type=int, default=500, help="distinct messages the publisher cycles through")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--background", default=None, choices=KINDS,
                    help="a second writer (another process) on the topic, publishing this kind at "
                         "--background-rate throughout, as the replay does beside the fuzz burst")
    ap.add_argument("--background-rate", type=float, default=30.0)
    ap.add_argument("--matrix", nargs="*", default=None, metavar="KIND",
                    help="run these kinds (default all) x --readers, one subprocess each")
    ap.add_argument("--readers", nargs="*", default=["take_raw"])
    ap.add_argument("--dds", default="udp", choices=["udp", "loopback", "shm_udp", "env"],
                    help="Fast DDS transports as hp_ros.ros_process.dds_profile_env (the graph tests: loopback); "
                         "env: the environment's FASTDDS_DEFAULT_PROFILES_FILE as it is")
    ap.add_argument("--pause", type=float, default=0.0, help="s to sleep after round 1 (attach a profiler)")
    ap.add_argument("--pub-depth", type=int, default=QOS_DEPTH_PUB,
                    help="the publisher's keep-last depth (the fuzz test's: 50)")
    ap.add_argument("--best-effort", action="store_true", help="a BEST_EFFORT reader (the writer stays reliable)")
    ap.add_argument("--hard-exit", action="store_true", help="os._exit after the report (nothing destroyed)")
    a = ap.parse_args()
    if a.role == "sub" and a.dds != "env":
        from hp_ros.ros_process import dds_profile_env

        for k, v in dds_profile_env(a.dds, {}).items():  # inherited by the publisher children
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if a.role == "pub":
        run_pub(a)
        return
    if a.matrix is None:
        r = run_sub(a)
        print(json.dumps(r), flush=True)
        if a.hard_exit:  # leave everything allocated (for heaptrack's "leaked" list)
            os._exit(0)
        return
    rows = []
    for kind in a.matrix or KINDS:
        for reader in a.readers:
            cmd = [sys.executable, os.path.abspath(__file__), "--kind", kind, "--reader", reader, "--pub", a.pub,
                   "--n", str(a.n), "--rounds", str(a.rounds), "--rate", str(a.rate), "--depth", str(a.depth),
                   "--take-period", str(a.take_period), "--pool", str(a.pool), "--seed", str(a.seed)]
            if a.background:
                cmd += ["--background", a.background, "--background-rate", str(a.background_rate)]
            cmd += ["--dds", a.dds]
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            try:
                r = json.loads(out.stdout.strip().splitlines()[-1])
            except (IndexError, ValueError):
                r = {"kind": kind, "reader": reader, "error": out.stderr[-500:]}
            rows.append(r)
            if "error" in r:
                print(f"{kind:22s} {reader:12s} ERROR {r['error']!r}", flush=True)
            else:
                print(f"{kind:22s} {reader:12s} data={r['data_bytes_msg0']:>7d}B recv={r['received']} "
                      f"rss0={r['rss0']:.0f} dRSS r1={r['d_rss_r1']:+.1f} r2..={r['d_rss_last']:+.1f} "
                      f"inuse r1={r['d_inuse_r1']:+.1f} r2..={r['d_inuse_last']:+.1f} MB", flush=True)
    print(json.dumps({"n": a.n, "rounds": a.rounds, "pub": a.pub, "rows": [
        {k: v for k, v in r.items() if k != "snaps"} for r in rows]}))


if __name__ == "__main__":
    main()
