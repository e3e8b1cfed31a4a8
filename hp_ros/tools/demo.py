"""``hp-ros demo``: the main job on the embedded default.

1. generate a synthetic Allegro in-hand sequence (built-in hand and object geometry) as a
   rosbag2 with ground truth;
2. start the full node graph — segmentation, tracking, refinement — as separate processes,
   exactly as ``launch/allegro_tracking.launch.py`` would (both read ``hp_ros.graph``);
3. replay the bag into the graph at the recorded rate, collecting the published TF, poses and
   tracking status in a listener node;
4. score the estimates against ground truth (the same ``metrics.json`` keys as ``hp-ros eval``
   plus ``output_rate_hz``, ``latency_ms_p95`` and the penetration of the published poses),
   print a table and write a report folder with plots.

The last line printed is the report folder's path. DDS stays on loopback (see README).
The listener is in :mod:`.demo_listener`, the scoring (step 4) in :mod:`.demo_score`.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

# offset_pose and time_to_first_pose: also importable from here (offline.py, the tests)
from hp_ros.tools.demo_listener import Collector
from hp_ros.tools.demo_score import initial_pose, offset_pose, score, time_to_first_pose


def add_arguments(parser):
    parser.add_argument("--out", default=None, help="report folder (default reports/demo-<time>)")
    parser.add_argument("--object", default="builtin:cracker_box", help="object: builtin:cracker_box|soup_can or a mesh")
    parser.add_argument("--duration", type=float, default=8.0, help="sequence length in seconds (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the synthetic sequence")
    parser.add_argument("--motion", default="lab", choices=("classic", "lab"),
                        help="synthetic motion: classic (hand base fixed) or lab (arm-carried hand, gaiting, /tf)")
    parser.add_argument("--rate", type=float, default=1.0, help="replay rate factor (default 1.0)")
    parser.add_argument("--startup-timeout", type=float, default=90.0, help="seconds to wait for the nodes")
    parser.add_argument("--object-backend", default=None,
                        help="segmentation object backend (default: the params file's, model with the "
                             "color|depth fallback); e.g. 'color|depth' (no depth fit: the earlier default)")
    parser.add_argument("--single-process", action="store_true",
                        help="run the three nodes in one process (the launch file's single_process:=true; "
                             "default: one process per node)")
    # the default since the thread-pool executor fix; still accepted for commands written before
    parser.add_argument("--separate-processes", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--initial-offset", type=float, nargs=2, metavar=("METRES", "DEGREES"), default=None,
                        help="give the tracker an initial pose this far off the first frame's ground truth (default: "
                             "none, the tracker finds the object itself: a global estimate by the refinement node)")
    parser.add_argument("--keep-bag", action="store_true",
                        help="keep the synthetic bag in the report folder (about 65 MB per second)")
    parser.add_argument("--overlays", type=int, default=6,
                        help="frames drawn into the report (overlays.png, overlays/): the object mesh at the "
                             "estimate and at the ground truth over the camera image (0 = none; default 6)")


# --- pipeline -----------------------------------------------------------------------------------

def _wait(predicate, timeout: float, what: str, procs=()):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        for p in procs:
            if not p.alive():
                raise RuntimeError(f"{p.name} exited while waiting for {what}:\n{p.log_text()[-3000:]}")
        time.sleep(0.1)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


def run_pipeline(out_dir: Path, object_spec: str = "builtin:cracker_box", duration: float = 8.0, seed: int = 0,
                 rate: float = 1.0, startup_timeout: float = 90.0, log=print,
                 initial_offset: tuple | None = None, object_backend: str | None = None,
                 transport: str = "loopback", single_process: bool = False, during_replay=None,
                 node_params: dict | None = None, place=None, overlays: int = 0,
                 motion: str = "classic", pause_while=None) -> dict:
    """Synthetic bag -> node graph -> replay -> collected estimates -> metrics dict.

    ``initial_offset``: (metres, degrees) between the tracker's initial pose and the first
    frame's ground truth (None: no initial pose, the tracker's cold start); ``object_backend``: the segmentation node's object backend (None =
    the params file's); ``transport``: ``loopback`` (config/fastdds_loopback_shm.xml: shared
    memory + UDP on 127.0.0.1; the launch file's lab default ``shm_udp`` is not for this machine's
    runs) or ``udp`` (rmw default, still under ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST); ``single_process``: the three nodes in one
    process (``hp_ros.nodes.graph_process``) or one each (the default); ``during_replay(seconds, collector)``:
    called every 0.2 s of the replay (tests inject bad input through ``collector.node``);
    ``node_params``: extra parameters for every node (``{"pairing_timeout": 0.0}``);
    ``place(name, argv, env) -> (argv, env)``: where each process runs (name: a node's, ``replay``,
    or ``listener`` for this process, whose argv is ignored), e.g. on a simulated host
    (``hp_ros.veth_hosts``); default: here, unchanged; ``overlays``: pictures of that many frames (the mesh
    at the estimate and at the ground truth over the camera image, :mod:`hp_ros.tools.overlay`) into
    ``out_dir/overlays`` and ``out_dir/overlays.png``; ``pause_while(collector) -> bool``: checked
    every 0.2 s; while true the replay holds (``--pause-file``; at most 120 s in all), so a test can
    wait for a slow answer without the sequence running out. Every process gets loopback-only DDS and one domain id for the run;
    the node logs stay in ``out_dir/logs`` (the result's ``logs`` entry).
    """
    from hp_ros import graph

    out_dir.mkdir(parents=True, exist_ok=True)
    seq, bag = _synthetic_bag(out_dir, object_spec, duration, seed, motion, log)
    place = place or (lambda name, argv, e: (argv, e))
    env = _graph_env(transport, place)
    procs = []
    collector = None
    logs = out_dir / "logs"
    try:
        _start_nodes(procs, logs, env, place, seq, object_spec, single_process, initial_offset, node_params,
                     object_backend)
        collector = Collector(object_frame="object", camera_frame=graph.CAMERA_FRAME)
        _wait(lambda: collector.count(graph.TOPICS["object_pose"], "publishers") >= 1
              and collector.count(graph.CAMERA_TOPICS["color_image"]) >= 1
              and collector.count(graph.JOINT_STATES) >= (1 if single_process else 2),
              startup_timeout, "the hp_ros nodes to come up", procs)
        log(f"[demo] node graph up ({', '.join(p.name for p in procs)}); replaying at {rate}x")
        usage = _replay_watching(out_dir, bag, seq, rate, single_process, place, env, logs, procs, collector,
                                 during_replay, pause_while)
    finally:
        for p in procs:
            p.stop()
        if collector is not None:
            collector.close()
    # the baselines hold / carry a start pose: the tracker's own, or (a cold start) 1 cm / 5 deg off the first frame
    result = score(seq, collector, object_spec, usage["t_replay"], initial_offset or (0.01, 5.0), rate=rate)
    if overlays:
        from hp_ros.core.objects import ObjectModel
        from hp_ros.tools.overlay import write_overlays

        files = write_overlays(out_dir / "overlays", lambda k: seq.rgb[k], seq.K, ObjectModel.from_spec(object_spec),
                               seq.frame_stamps_ns, seq.T_cam_obj, {s: v[0] for s, v in collector.poses.items()},
                               overlays)
        result["overlays"] = [str(f) for f in files]
    result["logs"] = str(logs)
    cpu_ms_per_frame, cpu_ms_steady = usage["cpu_ms_per_frame"], usage["cpu_ms_steady"]
    result["cpu_percent"] = usage["cpu_percent"]  # per process during the replay (100 = one core)
    result["cpu_ms_per_frame"] = cpu_ms_per_frame  # per process, CPU ms per streamed camera frame
    result["cpu_ms_per_frame_total"] = round(sum(v for k, v in cpu_ms_per_frame.items() if k != "replay"), 2)
    result["cpu_ms_per_frame_tracking"] = cpu_ms_steady  # from 1 s after the first pose (empty: too few frames)
    result["cpu_ms_per_frame_tracking_total"] = round(sum(v for k, v in cpu_ms_steady.items() if k != "replay"), 2) \
        if cpu_ms_steady else None
    result["rss_mb"] = usage["rss"]                # resident memory of the node processes over the replay
    result["alive_at_end"] = usage["alive"]        # every node process still running after the replay
    result["rss_parts_mb"] = usage["rss_parts"]    # at the end: anonymous, file-backed, shared memory (DDS segments)
    return result


def _synthetic_bag(out_dir: Path, object_spec: str, duration: float, seed: int, motion: str, log) -> tuple:
    """Step 1: the synthetic sequence and its rosbag2 ``out_dir/synthetic_bag``; returns ``(seq, bag path)``."""
    from hp_ros.core import synth

    t0 = time.monotonic()
    cfg = synth.SynthConfig(object=object_spec, duration_s=duration, seed=seed, motion=motion)
    seq = synth.generate_sequence(cfg)
    bag = out_dir / "synthetic_bag"
    synth.write_sequence_bag(seq, bag)
    log(f"[demo] synthetic sequence: {len(seq.frame_stamps_ns)} frames, {len(seq.joint_stamps_ns)} joint states "
        f"({time.monotonic() - t0:.1f} s) -> {bag}")
    return seq, bag


def _graph_env(transport: str, place) -> dict:
    """The processes' environment (loopback-only DDS, one domain id, ``transport``); this
    process's listener joins the graph with the same DDS settings (set in ``os.environ``)."""
    import os

    from hp_ros.ros_process import loopback_env, pick_domain_id

    env = loopback_env(domain_id=int(os.environ.get("ROS_DOMAIN_ID", pick_domain_id())),
                       base={**os.environ, "HP_ROS_DDS_TRANSPORT": transport})
    listener_env = place("listener", [], env)[1]
    for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_LOCALHOST_ONLY", "RMW_IMPLEMENTATION",
              "FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE", "HP_ROS_DDS_TRANSPORT",
              "ROS_STATIC_PEERS"):
        if k in listener_env:  # this process's listener joins the graph with the same transports
            os.environ[k] = listener_env[k]
        else:
            os.environ.pop(k, None)
    return env


def _start_nodes(procs: list, logs: Path, env: dict, place, seq, object_spec: str, single_process: bool,
                 initial_offset, node_params, object_backend) -> None:
    """Step 2: the node graph's processes with the demo's parameters, appended to ``procs`` as
    they start (the caller stops them, also when a later one fails)."""
    import sys

    from hp_ros import graph
    from hp_ros.ros_process import NodeProcess

    launch_args = {"object_mesh": object_spec, "single_process": str(single_process).lower()}
    for name, cmd in graph.process_commands(launch_args, python=sys.executable):
        for spec in graph.NODES if name == "graph_process" else [s for s in graph.NODES if s.name == name]:
            cmd += demo_parameters(spec.name, seq, initial_offset)  # distinct names: one process takes all
        for k, v in (node_params or {}).items():
            cmd += ["-p", f"{k}:={v}"]
        if name in ("segmentation_node", "graph_process") and object_backend:
            cmd += ["-p", f"object_backend:={object_backend}"]
        cmd, node_env = place(name, cmd, env)
        procs.append(NodeProcess(cmd, log_dir=logs, env=node_env, name=name))


def _replay_inputs(seq, single_process: bool) -> tuple[list, int]:
    """The bag's topics the replay plays - only what a robot would publish: the ground truth stays
    in the bag for scoring (/tf: the arm's world -> hand base, motion 'lab') - and the number of
    DDS readers of them it waits for (the graph's and this listener's)."""
    from hp_ros import graph

    moving = seq.T_world_hand_tf is not None
    inputs = [*graph.CAMERA_TOPICS.values(), graph.JOINT_STATES, "/tf_static", *(["/tf"] if moving else [])]
    # play only once the replay's writers have matched every reader of the graph (discovery
    # takes 0.3-2.7 s): a late match lost the first second of frames, /tf_static with it
    readers = sum(1 for spec in graph.NODES for t in spec.subscribes if t in inputs
                  and not (spec.name == "refinement_node" and t == graph.CAMERA_TOPICS["depth_image"]))
    own = ("/tf_static", "/tf")  # each node's CameraToHand subscribes these itself
    if single_process:  # one DDS reader per input topic for all nodes (LocalBus), /tf_static and /tf one each
        readers = len({t for spec in graph.NODES for t in spec.subscribes if t in inputs and t not in own}) \
            + sum(1 for spec in graph.NODES for t in own if t in inputs and t in spec.subscribes)
    readers += 1 + int(moving)  # this listener's colour camera_info (and /tf)
    return inputs, readers


def _replay_watching(out_dir: Path, bag: Path, seq, rate: float, single_process: bool, place, env: dict, logs: Path,
                     procs: list, collector: Collector, during_replay=None, pause_while=None) -> dict:
    """Step 3: the bag replayed into the graph while the node processes are watched (every 0.2 s:
    alive, CPU seconds, resident memory). Returns ``t_replay`` (s) and the processes' usage:
    ``cpu_percent``, ``cpu_ms_per_frame``, ``cpu_ms_steady``, ``rss``, ``alive``, ``rss_parts``."""
    import sys

    from hp_ros.ros_process import NodeProcess

    inputs, readers = _replay_inputs(seq, single_process)
    pause_file = out_dir / "replay.pause"
    pause_file.unlink(missing_ok=True)
    cmd, replay_env = place("replay", [sys.executable, "-m", "hp_ros.tools.replay", str(bag), "--rate", str(rate),
                                       "--topics", *inputs, "--wait-subscribers", str(readers), "--quiet",
                                       "--pause-file", str(pause_file)], env)
    paused_s = 0.0
    replay = NodeProcess(cmd, log_dir=logs, env=replay_env, name="replay")
    t_start = time.monotonic()
    rss = []  # (seconds into the replay, {process: resident MB}) every 0.2 s
    cpu0 = {p.name: _cpu_seconds(p.proc.pid) for p in [*procs, replay]}
    cpu_last = dict(cpu0)
    streaming = False  # CPU is counted from the first frame on (not the replay's start-up)
    steady = None      # (CPU seconds, frames seen) one second after the first pose: tracking only
    t_first_pose = None
    while replay.alive():
        if during_replay is not None:
            during_replay(time.monotonic() - t_start, collector)
        if pause_while is not None:
            hold = paused_s < 120.0 and bool(pause_while(collector))
            pause_file.touch() if hold else pause_file.unlink(missing_ok=True)
            paused_s += 0.2 if hold else 0.0
        if not streaming and collector.images:
            streaming, t_stream = True, time.monotonic()
            cpu0 = {p.name: _cpu_seconds(p.proc.pid) for p in [*procs, replay]}
        if t_first_pose is None and collector.poses:
            t_first_pose = time.monotonic()
        if steady is None and t_first_pose is not None and time.monotonic() - t_first_pose >= 1.0:
            steady = ({p.name: _cpu_seconds(p.proc.pid) for p in [*procs, replay]}, len(collector.images))
        cpu_last.update({p.name: _cpu_seconds(p.proc.pid) for p in [*procs, replay]})
        rss.append((time.monotonic() - t_start, {p.name: _rss_mb(p.proc.pid) for p in procs}))
        for p in procs:
            if not p.alive():
                raise RuntimeError(f"{p.name} died during replay:\n{p.log_text()[-3000:]}")
        time.sleep(0.2)
    if replay.proc.returncode != 0:
        raise RuntimeError(f"replay failed:\n{replay.log_text()[-2000:]}")
    t_replay = time.monotonic() - t_start
    t_cpu = time.monotonic() - (t_stream if streaming else t_start)
    cpu_last.update({p.name: _cpu_seconds(p.proc.pid) for p in procs})
    cpu_percent = {k: round(100.0 * (cpu_last[k] - cpu0[k]) / t_cpu, 1)
                   for k in cpu0 if cpu0[k] is not None and cpu_last.get(k) is not None}
    # CPU time per camera frame of the stream (the frames this listener saw published)
    n_stream = max(1, len(collector.images))
    cpu_ms_per_frame = {k: round(1000.0 * (cpu_last[k] - cpu0[k]) / n_stream, 2)
                        for k in cpu0 if cpu0[k] is not None and cpu_last.get(k) is not None}
    # the same from one second after the first pose on (a cold start's global search and the
    # fallback segmentation before it left out): what tracking costs
    n_steady = len(collector.images) - steady[1] if steady is not None else 0
    cpu_ms_steady = {k: round(1000.0 * (cpu_last[k] - steady[0][k]) / n_steady, 2)
                     for k in steady[0] if steady[0][k] is not None and cpu_last.get(k) is not None} \
        if n_steady >= 10 else {}
    time.sleep(1.5)  # trailing outputs
    rss.append((time.monotonic() - t_start, {p.name: _rss_mb(p.proc.pid) for p in procs}))
    alive = {p.name: p.alive() for p in procs}
    rss_parts = {p.name: _rss_mb(p.proc.pid, ("RssAnon:", "RssFile:", "RssShmem:")) for p in procs}
    return dict(t_replay=t_replay, cpu_percent=cpu_percent, cpu_ms_per_frame=cpu_ms_per_frame,
                cpu_ms_steady=cpu_ms_steady, rss=rss, alive=alive, rss_parts=rss_parts)


def _rss_mb(pid: int, fields=("VmRSS:",)):
    """Resident memory [MB] of a running process (Linux /proc ``status`` ``fields``: one -> a
    number, several -> a dict), None when unreadable."""
    found = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.split(":")[0] + ":" in fields:
                    found[line.split(":")[0]] = round(int(line.split()[1]) / 1024.0, 1)
    except (OSError, ValueError, IndexError):
        return None
    return found.get(fields[0].rstrip(":")) if len(fields) == 1 else found


def _cpu_seconds(pid: int):
    """User + system CPU seconds of a running process (Linux /proc), None when unreadable."""
    import os

    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def demo_parameters(node_name: str, seq, initial_offset: tuple | None = None) -> list:
    """Extra ``-p`` arguments the demo gives a node: the fingertip marker colours of the
    synthetic hand (segmentation) and, with ``initial_offset`` = (metres, degrees) off the first
    frame's ground truth, an initial pose (tracking; None: none, as in a lab)."""
    if node_name == "segmentation_node" and len(getattr(seq, "marker_colors", ())) == 4:
        colors = [round(255.0 * float(c), 3) for rgb in seq.marker_colors for c in rgb]
        return ["-p", f"marker_colors:={colors}", "-p", f"marker_radius:={float(seq.marker_radius)}"]
    if node_name != "tracking_node" or initial_offset is None:
        return []
    from hp_ros.core import se3
    import torch

    p, q = se3.pose_to_xyz_quat(torch.as_tensor(initial_pose(seq, initial_offset)))
    return ["-p", "initial_pose:=" + str([float(v) for v in [*p, *q]])]


def run(args) -> int:
    from hp_ros.tools.evaluate import print_summary, write_report

    out = Path(args.out) if args.out else Path("reports") / time.strftime("demo-%Y%m%d-%H%M%S")
    t0 = time.monotonic()
    result = run_pipeline(out, args.object, args.duration, args.seed, args.rate, args.startup_timeout,
                          object_backend=args.object_backend, single_process=args.single_process, motion=args.motion,
                          initial_offset=None if args.initial_offset is None else tuple(args.initial_offset),
                          transport="loopback",  # one machine: DDS on loopback (the launch default reaches the LAN)
                          overlays=args.overlays)
    write_report(result, out)
    with open(out / "metrics.json") as f:
        merged = json.load(f)
    for key in ("output_rate_hz", "latency_ms_p95", "latency_ms_median", "max_penetration_mm", "tf_messages",
                "final_state", "segmentation_rate_hz", "cpu_ms_per_frame", "cpu_ms_per_frame_total", "baselines",
                "tracker_compared", "adds_ratio_to_baseline", "rot_ratio_to_baseline", "motion"):
        if key in result:
            merged[key] = result[key]
    with open(out / "metrics.json", "w") as f:
        json.dump(merged, f, indent=2)
    if not args.keep_bag:
        import shutil

        shutil.rmtree(out / "synthetic_bag", ignore_errors=True)
    print_summary(result, out)
    print(f"output rate {result['output_rate_hz']:.1f} Hz, latency p95 {result['latency_ms_p95']:.1f} ms, "
          f"max penetration {result['max_penetration_mm']:.2f} mm, segmentation {result['segmentation_rate_hz']:.1f} "
          f"frames/s, CPU {result['cpu_ms_per_frame_total']:.1f} ms per frame for the nodes "
          f"({result['cpu_ms_per_frame']}), total {time.monotonic() - t0:.0f} s")
    if result.get("overlays"):
        print(f"overlay pictures (estimate green, ground truth red): {out / 'overlays.png'} and "
              f"{len(result['overlays']) - 1} frames in {out / 'overlays'}")
    if result.get("baselines"):
        b = ", ".join(f"{n} ADD-S {v['adds_mean_cm']:.2f} cm / rotation {v['rot_err_mean_deg']:.1f} deg"
                      for n, v in result["baselines"].items())
        print(f"baselines ({result['motion']} motion): {b}; tracker / better baseline: ADD-S "
              f"{result['adds_ratio_to_baseline']:.2f}, rotation {result['rot_ratio_to_baseline']:.2f}")
    print(out.resolve())
    return 0
