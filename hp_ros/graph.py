"""The hp_ros node graph: one source of truth for the launch file, the demo and the tests.

``launch/allegro_tracking.launch.py`` turns :data:`NODES` into launch_ros ``Node`` actions;
the demo and the end-to-end tests start the same executables with the same parameters and
remappings as separate processes (launch/launch_ros are not installable on PyPI).
"""
from __future__ import annotations

from dataclasses import dataclass, field

NAMESPACE = "hp_ros"

# Driver defaults (realsense2_camera >= 4.54, Wonik's ROS 2 Allegro driver).
CAMERA_TOPICS = {
    "color_image": "/camera/camera/color/image_raw",
    "color_info": "/camera/camera/color/camera_info",
    "depth_image": "/camera/camera/aligned_depth_to_color/image_raw",
    "depth_info": "/camera/camera/aligned_depth_to_color/camera_info",
}
JOINT_STATES = "/joint_states"
CAMERA_FRAME = "camera_color_optical_frame"

# hp_ros topics and services (absolute names; nodes run in the /hp_ros namespace).
TOPICS = {
    "hand_mask": f"/{NAMESPACE}/hand_mask",                  # sensor_msgs/Image mono8
    "object_mask": f"/{NAMESPACE}/object_mask",              # sensor_msgs/Image mono8
    "object_observation": f"/{NAMESPACE}/object_observation",  # hp_ros_msgs/ObjectObservation
    "fingertips": f"/{NAMESPACE}/fingertips",                # hp_ros_msgs/FingertipObservations
    "hand_alignment": f"/{NAMESPACE}/hand_alignment",        # geometry_msgs/TransformStamped camera->hand (depth ICP)
    "overlay": f"/{NAMESPACE}/segmentation_overlay",         # sensor_msgs/Image rgb8
    "object_pose": f"/{NAMESPACE}/object_pose",              # geometry_msgs/PoseWithCovarianceStamped
    "tracking_status": f"/{NAMESPACE}/tracking_status",      # hp_ros_msgs/TrackingStatus
    "initial_pose": f"/{NAMESPACE}/initial_pose",            # geometry_msgs/PoseStamped (in)
    "refined_pose": f"/{NAMESPACE}/refined_pose",            # geometry_msgs/PoseWithCovarianceStamped
    "ground_truth": f"/{NAMESPACE}/ground_truth/object_pose",  # geometry_msgs/PoseStamped (synthetic)
    "detections": f"/{NAMESPACE}/detections",                # vision_msgs/Detection3DArray
    "vision_info": f"/{NAMESPACE}/vision_info",              # vision_msgs/VisionInfo (transient local)
    "contacts": f"/{NAMESPACE}/contacts",                    # hp_ros_msgs/ContactMap
    "markers": f"/{NAMESPACE}/markers",                      # visualization_msgs/MarkerArray (while subscribed)
}
SERVICES = {
    "refine_pose": f"/{NAMESPACE}/refine_pose",              # hp_ros_msgs/srv/RefinePose
    "reset_tracking": f"/{NAMESPACE}/reset_tracking",        # std_srvs/srv/Trigger
}

# how refine_pose's failure messages start, for a client to tell them apart: the node has no
# camera_info or frame yet, or is serving another request (ask again soon, quietly); every global
# search's answer failed the acceptance check (the best-fitting pose is still in the response)
REFINE_NOT_READY, REFINE_BUSY, REFINE_REJECTED = "not ready:", "busy:", "rejected:"


@dataclass
class NodeSpec:
    """One node of the graph: console script, python module, default parameters, topics."""

    name: str
    executable: str
    module: str
    subscribes: list = field(default_factory=list)
    publishes: list = field(default_factory=list)
    services: list = field(default_factory=list)
    clients: list = field(default_factory=list)


NODES = [
    NodeSpec("segmentation_node", "segmentation_node", "hp_ros.nodes.segmentation_node",
             subscribes=[CAMERA_TOPICS["color_image"], CAMERA_TOPICS["color_info"],
                         CAMERA_TOPICS["depth_image"], JOINT_STATES, "/tf_static", "/tf",
                         TOPICS["object_pose"]],  # object_pose: prior of the model backend only
             publishes=[TOPICS["hand_mask"], TOPICS["object_mask"], TOPICS["object_observation"],
                        TOPICS["fingertips"], TOPICS["hand_alignment"], TOPICS["overlay"], "/diagnostics"]),
    NodeSpec("tracking_node", "tracking_node", "hp_ros.nodes.tracking_node",
             subscribes=[JOINT_STATES, CAMERA_TOPICS["color_info"], TOPICS["object_observation"],
                         TOPICS["fingertips"], TOPICS["hand_alignment"], "/tf_static", "/tf", TOPICS["initial_pose"],
                         TOPICS["refined_pose"]],
             publishes=[TOPICS["object_pose"], "/tf", TOPICS["tracking_status"], TOPICS["detections"],
                        TOPICS["vision_info"], TOPICS["contacts"], TOPICS["markers"], "/diagnostics"],
             services=[SERVICES["reset_tracking"]], clients=[SERVICES["refine_pose"]]),
    NodeSpec("refinement_node", "refinement_node", "hp_ros.nodes.refinement_node",
             subscribes=[CAMERA_TOPICS["color_image"], CAMERA_TOPICS["color_info"],
                         CAMERA_TOPICS["depth_image"], JOINT_STATES, TOPICS["hand_mask"],
                         TOPICS["object_mask"], TOPICS["object_pose"], "/tf_static", "/tf"],
             publishes=[TOPICS["refined_pose"], "/diagnostics"], services=[SERVICES["refine_pose"]]),
]


def describe() -> str:
    """The graph as text (topics in and out of every node)."""
    lines = []
    for n in NODES:
        lines.append(f"/{NAMESPACE}/{n.name}  ({n.executable})")
        for label, items in (("sub", n.subscribes), ("pub", n.publishes), ("srv", n.services), ("cli", n.clients)):
            for t in items:
                lines.append(f"    {label}  {t}")
    return "\n".join(lines)


# --- launch arguments -> concrete node invocations (used by the launch file and the demo) ----

LAUNCH_ARGUMENTS = {
    # name: (default, description)
    "camera_namespace": ("/camera/camera", "namespace of the realsense2_camera topics"),
    "joint_states_topic": (JOINT_STATES, "sensor_msgs/JointState topic of the Allegro driver"),
    "joint_naming": ("wonik", "joint names: wonik (ah_joint00..ah_joint33) or simlab (joint_0.0..joint_15.0)"),
    "hand_urdf": ("", "hand description (.urdf or .xacro); empty = the project's URDF"),
    "object_mesh": ("builtin:cracker_box", "object mesh file (OBJ/PLY/STL/GLB) or builtin:cracker_box|soup_can"),
    "object_units": ("auto", "object mesh units: m, mm or auto"),
    "object_frame": ("object", "TF frame name of the object"),
    "camera_to_hand": ("", "camera->hand-base transform 'x y z qx qy qz qw'; empty = from /tf_static"),
    "params_file": ("", "parameter YAML; empty = share/hp_ros/config/allegro_tracking.yaml"),
    "log_level": ("info", "log level of the hp_ros nodes"),
    "use_sim_time": ("false", "use /clock (bag replay with --clock)"),
    "single_process": ("false", "false: one process per node (measured faster on 2 cores, see README); true: "
                                "the three nodes in one process (hp_ros_graph: no serialisation between them, "
                                "camera images received once, one GIL)"),
    "nodes": ("all", "the nodes this launch starts: all, or some of segmentation_node,tracking_node,"
                     "refinement_node (comma-separated): one host's share of a graph across machines"),
    "rviz": ("false", "true: also start rviz2 with config/hp_ros.rviz (object mesh by tracking state, contacts, "
                      "fingertips, covariance: /hp_ros/markers, built only while subscribed)"),
    "dds_transport": ("shm_udp", "Fast DDS transports of the nodes: shm_udp (config/fastdds_shm_udp.xml: shared "
                                 "memory between processes of one host + UDP on every interface, discovery as "
                                 "ROS_DOMAIN_ID, ROS_AUTOMATIC_DISCOVERY_RANGE and ROS_STATIC_PEERS say: a graph "
                                 "across machines), loopback (config/fastdds_loopback_shm.xml: shared memory + UDP on "
                                 "127.0.0.1 only: one machine) or udp (the rmw default); a "
                                 "FASTDDS_DEFAULT_PROFILES_FILE already set wins"),
}

# Launch arguments that become parameters of every node (name -> parameter name).
_SHARED_PARAMETER_ARGS = {
    "joint_naming": "joint_naming", "hand_urdf": "hand_urdf", "object_mesh": "object_mesh",
    "object_units": "object_units", "object_frame": "object_frame", "camera_to_hand": "camera_to_hand",
}


def config_file(name: str) -> str:
    """The installed ``share/hp_ros/config/<name>``, else the source tree's."""
    from pathlib import Path

    try:
        from ament_index_python.packages import get_package_share_directory

        p = Path(get_package_share_directory("hp_ros")) / "config" / name
        if p.exists():
            return str(p)
    except Exception:  # not installed through ament (venv / source tree)
        pass
    return str(Path(__file__).resolve().parents[1] / "config" / name)


def default_params_file() -> str:
    """The installed ``share/hp_ros/config/allegro_tracking.yaml``, else the source tree's."""
    return config_file("allegro_tracking.yaml")


# Fast DDS profiles of the ``dds_transport`` choices (config/<file>; ``udp``: none, the rmw default).
# shm_udp (the launch default, a lab's graph across hosts): shared memory + UDPv4 on every interface;
# loopback (the demo, the tests, the benchmarks): shared memory + UDPv4 on 127.0.0.1 only.
DDS_PROFILES = {"shm_udp": "fastdds_shm_udp.xml", "loopback": "fastdds_loopback_shm.xml", "udp": None}


def remappings(args: dict) -> list:
    """Topic remappings implied by the launch arguments (``(from, to)`` pairs)."""
    ns = args.get("camera_namespace", LAUNCH_ARGUMENTS["camera_namespace"][0]).rstrip("/")
    pairs = []
    for key, default in CAMERA_TOPICS.items():
        new = ns + default[len("/camera/camera"):]
        if new != default:
            pairs.append((default, new))
    js = args.get("joint_states_topic", JOINT_STATES)
    if js != JOINT_STATES:
        pairs.append((JOINT_STATES, js))
    return pairs


def node_invocations(args: dict | None = None) -> list:
    """For every node: ``(spec, parameters dict, params_file, remappings, ros_args)``.

    ``args`` holds launch-argument values as strings (missing ones take their defaults).
    """
    full = {k: v[0] for k, v in LAUNCH_ARGUMENTS.items()}
    full.update(args or {})
    params = {p: full[a] for a, p in _SHARED_PARAMETER_ARGS.items() if full[a] != ""}
    params["use_sim_time"] = str(full["use_sim_time"]).lower() in ("1", "true", "yes")
    params_file = full["params_file"] or default_params_file()
    out = []
    for spec in selected_nodes(full):
        ros_args = ["--log-level", full["log_level"]]
        out.append((spec, dict(params), params_file, remappings(full), ros_args))
    return out


def selected_nodes(args: dict | None = None) -> list:
    """The :data:`NODES` named by the ``nodes`` launch argument (``all``: every one, in graph order);
    ValueError for an unknown name, or for a subset in one process (``single_process``)."""
    value = str((args or {}).get("nodes", LAUNCH_ARGUMENTS["nodes"][0])).strip()
    if value in ("", "all"):
        return list(NODES)
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in {s.name for s in NODES}]
    if unknown:
        raise ValueError(f"nodes: unknown node(s) {unknown}; use all or some of {[s.name for s in NODES]}")
    if single_process(args):
        raise ValueError(f"nodes:={value} with single_process:=true: one process holds all three nodes; "
                         f"start a subset with single_process:=false")
    return [s for s in NODES if s.name in names]


# The single-process variant (launch argument single_process): console script and module.
GRAPH_PROCESS = ("hp_ros_graph", "hp_ros.nodes.graph_process")


def single_process(args: dict | None = None) -> bool:
    """The value of the ``single_process`` launch argument."""
    value = (args or {}).get("single_process", LAUNCH_ARGUMENTS["single_process"][0])
    return str(value).lower() in ("1", "true", "yes")


def process_commands(args: dict | None = None, python: str | None = None) -> list:
    """The graph as ``(name, argv)`` for its processes, exactly as the launch file starts it: one
    per node, or one ``graph_process`` for all (``single_process``: the node names come from the
    code, the parameters from the params file's per-node sections)."""
    import sys

    invocations = node_invocations(args)
    if single_process(args):
        spec, params, params_file, remaps, ros_args = invocations[0]  # the shared arguments are the same
        invocations = [(None, params, params_file, remaps, ros_args)]
    cmds = []
    for spec, params, params_file, remaps, ros_args in invocations:
        module = spec.module if spec is not None else GRAPH_PROCESS[1]
        cmd = [python or sys.executable, "-m", module, "--ros-args", "-r", f"__ns:=/{NAMESPACE}"]
        if spec is not None:
            cmd += ["-r", f"__node:={spec.name}"]
        cmd += ["--params-file", params_file]
        for k, v in params.items():
            cmd += ["-p", f"{k}:={str(v).lower() if isinstance(v, bool) else v}"]
        for a, b in remaps:
            cmd += ["-r", f"{a}:={b}"]
        cmds.append((spec.name if spec is not None else "graph_process", cmd + ros_args))
    return cmds
