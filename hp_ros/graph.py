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
    "overlay": f"/{NAMESPACE}/segmentation_overlay",         # sensor_msgs/Image rgb8
    "object_pose": f"/{NAMESPACE}/object_pose",              # geometry_msgs/PoseWithCovarianceStamped
    "tracking_status": f"/{NAMESPACE}/tracking_status",      # hp_ros_msgs/TrackingStatus
    "initial_pose": f"/{NAMESPACE}/initial_pose",            # geometry_msgs/PoseStamped (in)
    "refined_pose": f"/{NAMESPACE}/refined_pose",            # geometry_msgs/PoseWithCovarianceStamped
    "ground_truth": f"/{NAMESPACE}/ground_truth/object_pose",  # geometry_msgs/PoseStamped (synthetic)
}
SERVICES = {
    "refine_pose": f"/{NAMESPACE}/refine_pose",              # hp_ros_msgs/srv/RefinePose
    "reset_tracking": f"/{NAMESPACE}/reset_tracking",        # std_srvs/srv/Trigger
}


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
                         CAMERA_TOPICS["depth_image"], JOINT_STATES, "/tf_static"],
             publishes=[TOPICS["hand_mask"], TOPICS["object_mask"], TOPICS["object_observation"],
                        TOPICS["fingertips"], TOPICS["overlay"]]),
    NodeSpec("tracking_node", "tracking_node", "hp_ros.nodes.tracking_node",
             subscribes=[JOINT_STATES, CAMERA_TOPICS["color_info"], TOPICS["object_observation"],
                         TOPICS["fingertips"], "/tf_static", TOPICS["initial_pose"], TOPICS["refined_pose"]],
             publishes=[TOPICS["object_pose"], "/tf", TOPICS["tracking_status"], "/diagnostics"],
             services=[SERVICES["reset_tracking"]], clients=[SERVICES["refine_pose"]]),
    NodeSpec("refinement_node", "refinement_node", "hp_ros.nodes.refinement_node",
             subscribes=[CAMERA_TOPICS["color_image"], CAMERA_TOPICS["color_info"],
                         CAMERA_TOPICS["depth_image"], JOINT_STATES, TOPICS["hand_mask"],
                         TOPICS["object_mask"], TOPICS["object_pose"], "/tf_static"],
             publishes=[TOPICS["refined_pose"]], services=[SERVICES["refine_pose"]]),
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
