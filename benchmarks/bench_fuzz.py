"""The live graph under a burst of malformed messages (issue 28): posed fraction and memory.

Runs the synthetic cracker-box sequence through the node graph (one process per node, as the
launch file) twice - clean, and with the burst of ``test/test_fuzz_graph.py`` (``--per-input``
malformed messages on each of the 12 inputs, paced at ``--burst-rate`` batches/s, plus malformed
refine_pose requests) - and reports per node: the posed fraction, the resident memory (VmRSS)
and proportional set size (Pss) just before the burst and at the end, and where the resident
memory lives at the end (/proc/PID/smaps: the malloc heap, other anonymous mappings - glibc's
thread arenas and mmapped chunks among them, ``large_maps_kib`` counts those by size -, Fast DDS
shared-memory segments in /dev/shm, files).

    PYTHONPATH=. scripts/run_isolated.sh python benchmarks/bench_fuzz.py --rate 1.0

Experiments: ``--repeat N`` bursts one after the other (a leak grows with each, a high-water mark
does not; ``rss_after_each_burst``); ``--topics T ...`` only those inputs' messages;
``--transport udp`` the rmw's default transports; ``--probe-trim`` makes each node call glibc's
``malloc_trim(0)`` through gdb after the burst (memory malloc held free); ``--profile S`` records
each node with py-spy for S seconds from the burst's start. The nodes get this script's
environment (``MALLOC_ARENA_MAX``, ``FASTDDS_BUILTIN_TRANSPORTS``, ...). The last printed line is
one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "test"))


def node_pids() -> dict:
    """{node name: pid} of this process's node children (``python -m hp_ros... <name>``)."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = (d / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if ppid != os.getpid():
            continue
        for part in cmd:
            name = Path(part.decode(errors="replace")).name.rsplit(".", 1)[-1]
            if name.endswith("_node") or name.endswith("_node.py"):
                out[name.removesuffix(".py")] = int(d.name)
                break
    return out


def memory_map(pid: int) -> dict:
    """Resident memory [MB] of ``pid`` by kind of mapping (/proc/PID/smaps) and its Pss."""
    kinds = {"heap": 0, "anon": 0, "shm": 0, "file": 0, "other": 0}
    sizes = {}  # KiB -> count of anonymous mappings of that size
    arenas = 0  # anonymous mappings of glibc's 64 MB thread-arena size (reserved, partly resident)
    pss = 0
    name = None
    try:
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                head = line.split()
                if not head:
                    continue
                if "-" in head[0] and not head[0].endswith(":"):
                    lo, hi = (int(x, 16) for x in head[0].split("-"))
                    path = head[5] if len(head) > 5 else ""
                    name = ("heap" if path == "[heap]" else "shm" if path.startswith("/dev/shm")
                            else "anon" if path == "" or path.startswith("[anon") else
                            "other" if path.startswith("[") else "file")
                    if path == "" and hi - lo == 64 << 20:
                        arenas += 1
                    if path == "" and 128 << 10 <= hi - lo < 16 << 20:  # malloc's mmapped chunks (large buffers)
                        sizes[(hi - lo) >> 10] = sizes.get((hi - lo) >> 10, 0) + 1
                elif head[0] == "Rss:":
                    kinds[name] += int(head[1])
                elif head[0] == "Pss:":
                    pss += int(head[1])
    except OSError:
        return {}
    out = {k: round(v / 1024.0, 1) for k, v in kinds.items()}
    out["rss"] = round(sum(kinds.values()) / 1024.0, 1)
    out["pss"] = round(pss / 1024.0, 1)
    out["arena_maps"] = arenas
    out["large_maps_kib"] = {k: v for k, v in sorted(sizes.items(), key=lambda kv: -kv[1]) if v >= 3}
    return out


def trim_probe(pid: int) -> dict:
    """Experiment (``--probe-trim``): resident memory [MB] of ``pid`` before and after gdb makes it
    call glibc's ``malloc_trim(0)`` - what the allocator held free, not returned to the system."""
    import subprocess

    before = memory_map(pid)
    subprocess.run(["gdb", "-p", str(pid), "-batch", "-ex", "call (int)malloc_trim(0)"],
                   capture_output=True, timeout=60)
    after = memory_map(pid)
    return {"rss_before": before.get("rss"), "rss_after": after.get("rss"),
            "anon+heap_freed": round(before.get("anon", 0) + before.get("heap", 0)
                                     - after.get("anon", 0) - after.get("heap", 0), 1)}


def snapshot() -> dict:
    return {name: memory_map(pid) for name, pid in node_pids().items()}


import subprocess  # noqa: E402


def run(rate: float, burst_on: bool, per_input: int, burst_rate: float, duration: float, seed: int,
        probe_trim: bool = False, profile_s: float = 0.0, topics: tuple = (),
        profile_dir: str = ".", repeat: int = 1,
        transport: str = "loopback") -> dict:
    from test_fuzz_graph import MalformedBurst

    from hp_ros.tools.demo import run_pipeline

    burst = MalformedBurst(after_frames=45, per_input=per_input, rate=burst_rate) if burst_on else None
    if burst is not None and topics:  # only these inputs (an experiment: which input grows memory)
        burst.messages = [[(t, m) for t, m in batch if t in topics] for batch in burst.messages]
        burst.refine_requests = []
        burst.requests = 0
    # further bursts of the same messages, each once the previous one ended: a leak grows with
    # every burst, a high-water mark (caches, pools) does not
    more = [MalformedBurst(after_frames=0, per_input=per_input, rate=burst_rate) for _ in range(repeat - 1)] \
        if burst is not None else []
    for b in more:
        b.messages, b.refine_requests, b.requests = burst.messages, burst.refine_requests, burst.requests
    current = [burst]
    marks = {"after_each": []}

    def hook(elapsed, collector):
        with collector._lock:
            seen = len(collector.images)
        if "before" not in marks and seen >= 45:
            marks["before"] = snapshot()
            marks["t_before"] = elapsed
        if burst is not None:
            if profile_s and burst.thread is None and seen >= burst.after_frames:
                spy = os.environ.get("PY_SPY", "py-spy")
                for name, pid in node_pids().items():  # CPU profile of each node during the burst
                    subprocess.Popen([spy, "record", "-p", str(pid), "-d", str(int(profile_s)), "-r", "50",
                                      "-f", "raw", "--nonblocking", "-o", str(Path(profile_dir) / f"spy_{name}.txt")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            burst(elapsed, collector)
            b = current[-1]
            if b.thread is not None and not b.thread.is_alive():
                if len(marks["after_each"]) < len(current):
                    marks["after_each"].append({k: v.get("rss") for k, v in snapshot().items()})
                if more:
                    current.append(more.pop(0))
            if current[-1] is not burst:
                current[-1](elapsed, collector)
        marks["last"] = snapshot()  # the final one is taken 0.2 s before the replay ends
        if probe_trim and "trim" not in marks and "t_before" in marks and (
                (burst is not None and burst.t_end is not None and elapsed > burst.t_end + 2.0)
                or (burst is None and elapsed > marks["t_before"] + 8.0)):
            marks["trim"] = {name: trim_probe(pid) for name, pid in node_pids().items()}

    with tempfile.TemporaryDirectory() as tmp:
        r = run_pipeline(Path(tmp) / "run", object_spec="builtin:cracker_box", duration=duration, seed=seed,
                         rate=rate, log=lambda *a: None, during_replay=hook, initial_offset=(0.01, 5.0),
                         transport=transport)
        logs = {p.stem: p.read_text() for p in Path(r["logs"]).glob("*.log")}
    if burst is not None:
        burst.thread.join(60.0)
    out = {"posed": r["n_matched"], "frames": r["n_frames"], "final_state": r["final_state"],
           "alive": all(r["alive_at_end"].values()),
           "tracebacks": sum(t.count("Traceback") for t in logs.values()),
           "cpu_percent": r["cpu_percent"],
           "rss_after_each_burst": marks["after_each"], "before": marks.get("before"), "end": marks.get("last"), "trim_probe": marks.get("trim")}
    if burst is not None:
        out["sent"] = sum(burst.sent.values())
        out["answered"] = f"{burst.answered}/{getattr(burst, 'requested', 0)}"
        after = [f for f in r["per_frame"] if burst.stamp_end and f["stamp_ns"] > burst.stamp_end + 1_000_000_000]
        out["after_burst_posed"] = f"{sum(f['matched'] for f in after)}/{len(after)}"
    out["growth_mb"] = {k: {"rss": round(out["end"][k]["rss"] - v["rss"], 1),
                            "pss": round(out["end"][k]["pss"] - v["pss"], 1),
                            "anon+heap": round(out["end"][k]["anon"] + out["end"][k]["heap"] - v["anon"] - v["heap"], 1),
                            "shm": round(out["end"][k]["shm"] - v["shm"], 1)}
                        for k, v in (out["before"] or {}).items() if k in (out["end"] or {})}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=1.0, help="replay rate (1.0: the camera's 30 Hz)")
    ap.add_argument("--per-input", type=int, default=2000)
    ap.add_argument("--burst-rate", type=float, default=100.0, help="batches (one message per input) per second")
    ap.add_argument("--duration", type=float, default=14.0)
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--only", choices=["clean", "burst"], default=None)
    ap.add_argument("--topics", nargs="*", default=(), help="send only these inputs' malformed messages")
    ap.add_argument("--profile", type=float, default=0.0,
                    help="py-spy each node for this many seconds from the burst's start (collapsed stacks "
                         "into --profile-dir/spy_<node>.txt; $PY_SPY: the py-spy executable)")
    ap.add_argument("--profile-dir", default=".")
    ap.add_argument("--transport", default="loopback", help="run_pipeline's: loopback (shared memory + UDP) or udp")
    ap.add_argument("--repeat", type=int, default=1, help="bursts, one after the other (a leak grows with each)")
    ap.add_argument("--probe-trim", action="store_true",
                    help="after the burst, make each node call malloc_trim(0) through gdb (experiment)")
    a = ap.parse_args()
    t0 = time.monotonic()
    res = {"rate": a.rate, "transport": a.transport, "repeat": a.repeat, "per_input": a.per_input, "burst_rate": a.burst_rate,
           "env": {k: os.environ[k] for k in os.environ if k.startswith("MALLOC_") or k.startswith("FASTDDS_BUILTIN")
                   or k == "RMW_FASTRTPS_USE_QOS_FROM_XML"}}
    for label in ("clean", "burst"):
        if a.only in (None, label):
            res[label] = run(a.rate, label == "burst", a.per_input, a.burst_rate, a.duration, a.seed,
                             a.probe_trim, a.profile, tuple(a.topics), a.profile_dir, a.repeat,
                             a.transport)
            print(label, json.dumps(res[label]), flush=True)
    if "clean" in res and "burst" in res:
        c, b = res["clean"], res["burst"]
        res["posed_vs_clean"] = round((b["posed"] / b["frames"]) / max(1e-9, c["posed"] / c["frames"]), 3)
        res["growth_beyond_clean_mb"] = {k: round(b["growth_mb"][k]["rss"] - c["growth_mb"].get(k, {}).get("rss", 0.0), 1)
                                         for k in b["growth_mb"]}
    res["wall_s"] = round(time.monotonic() - t0, 1)
    print(json.dumps({k: v for k, v in res.items() if k not in ("clean", "burst")}
                     | {k: {kk: res[k][kk] for kk in ("posed", "frames", "final_state", "growth_mb", "trim_probe",
                                                     "rss_after_each_burst")}
                        for k in ("clean", "burst") if k in res}))


if __name__ == "__main__":
    main()
