"""ament_python package definition for hp_ros (also a plain pip-installable package)."""
from glob import glob

from setuptools import find_packages, setup

package_name = "hp_ros"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(include=["hp_ros", "hp_ros.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.py")),
        ("share/" + package_name + "/config", glob("config/*.yaml") + glob("config/*.xml") + glob("config/*.rviz")),
        ("share/" + package_name + "/urdf", glob("urdf/*.urdf")),
    ],
    package_data={"hp_ros": ["data/*"]},
    include_package_data=True,
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="hp_ros developers",
    maintainer_email="hp-ros@example.org",
    description="Physically consistent 6-DoF pose of an object held by an Allegro hand (HandyPriors) for ROS 2",
    license="BSD-3-Clause",
    entry_points={
        "console_scripts": [
            "hp-ros = hp_ros.cli:main",
            "segmentation_node = hp_ros.nodes.segmentation_node:main",
            "tracking_node = hp_ros.nodes.tracking_node:main",
            "refinement_node = hp_ros.nodes.refinement_node:main",
            "hp_ros_graph = hp_ros.nodes.graph_process:main",
            "pose_smoke_node = hp_ros.nodes.pose_smoke_node:main",
        ],
    },
)
