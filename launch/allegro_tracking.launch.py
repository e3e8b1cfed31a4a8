"""Start the hp_ros graph: segmentation, tracking (EKF) and refinement nodes.

    ros2 launch hp_ros allegro_tracking.launch.py object_mesh:=/path/to/mesh.ply object_units:=mm
    ros2 launch hp_ros allegro_tracking.launch.py rviz:=true     # and RViz with config/hp_ros.rviz

Nodes, parameters and remappings come from ``hp_ros.graph`` — the same source the demo and
the end-to-end tests use to start the graph without launch_ros. DDS reaches other hosts by
default (``dds_transport:=shm_udp``); ``dds_transport:=loopback`` keeps it on this machine.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from hp_ros import graph


def _nodes(context):
    import os

    from hp_ros.ros_process import dds_profile_env

    values = {name: LaunchConfiguration(name).perform(context) for name in graph.LAUNCH_ARGUMENTS}
    # Fast DDS profile of dds_transport (default shm_udp: shared memory on this host + UDP on every
    # interface, config/fastdds_shm_udp.xml); only FASTDDS_DEFAULT_PROFILES_FILE is set, so the
    # user's ROS_DOMAIN_ID, ROS_AUTOMATIC_DISCOVERY_RANGE and ROS_STATIC_PEERS reach the nodes as they are
    dds_env = {k: v for k, v in dds_profile_env(values["dds_transport"], base=os.environ).items() if v is not None}
    actions = []
    if values.get("rviz", "false").lower() in ("1", "true", "yes"):  # the viewer: config/hp_ros.rviz
        actions.append(Node(package="rviz2", executable="rviz2", name="rviz2",
                            arguments=["-d", graph.config_file("hp_ros.rviz")], additional_env=dds_env,
                            output="screen"))
    invocations = graph.node_invocations(values)
    if graph.single_process(values):
        # one process for the three nodes (names from the code, parameters from the params file's
        # per-node sections): no name remapping, which would rename all three
        _, params, params_file, remaps, ros_args = invocations[0]
        return actions + [Node(package="hp_ros", executable=graph.GRAPH_PROCESS[0], namespace=graph.NAMESPACE,
                               parameters=[params_file, params], remappings=remaps, arguments=["--ros-args", *ros_args],
                               additional_env=dds_env, output="screen", emulate_tty=True)]
    for spec, params, params_file, remaps, ros_args in invocations:
        actions.append(Node(
            package="hp_ros", executable=spec.executable, name=spec.name, namespace=graph.NAMESPACE,
            parameters=[params_file, params], remappings=remaps, arguments=["--ros-args", *ros_args],
            additional_env=dds_env, output="screen", emulate_tty=True))
    return actions


def generate_launch_description():
    args = [DeclareLaunchArgument(name, default_value=default, description=text)
            for name, (default, text) in graph.LAUNCH_ARGUMENTS.items()]
    return LaunchDescription([*args, OpaqueFunction(function=_nodes)])
