"""Writing a sequence out: a rosbag2 with the RealSense / Allegro driver topics and a JSON sidecar
(:data:`SIDECAR_NAME`) with the ground-truth facts."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .data import SynthSequence
from .render import iter_rendered_frames

SIDECAR_NAME = "hp_ros_synth.json"


def write_sequence_bag(seq: SynthSequence, path, storage: str = "mcap", progress=None) -> Path:
    """Write ``seq`` as a rosbag2 (driver default topics, see :mod:`hp_ros.io.bag`).

    Topics: colour image (rgb8) + camera_info, aligned depth (16UC1 mm) + camera_info, all with
    frame ``camera_color_optical_frame``; ``/joint_states`` (names ``seq.joint_names``); one
    ``/tf_static`` message camera_color_optical_frame -> hand base with the **published**
    calibration (with error) - or, on a moving base (motion ``lab``), camera_color_optical_frame ->
    ``world`` on ``/tf_static`` and world -> hand base on ``/tf`` with every joint state (with the
    error and the /tf noise); ground truth object pose (PoseStamped) and object/hand masks
    (mono8 0/255) with the image stamps. Frames are rendered on the fly when ``seq.rgb`` is None.
    Beside the bag's files a JSON sidecar ``hp_ros_synth.json`` (:meth:`SynthSequence.metadata`)
    records the object spec, seed, config and ground-truth facts.

    ``progress``: optional callable ``progress(done_frames, total_frames)``.
    """
    from hp_ros.io import bag as B
    from hp_ros.io import msgs as M

    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} exists already; choose a new output path")
    if storage not in B.STORAGES:
        raise ValueError(f"unknown storage {storage!r}; choose one of {B.STORAGES}")
    cam = seq.camera_frame
    with B.BagWriter(path, storage=storage) as bag:
        Image = bag.msg_class("sensor_msgs/msg/Image")
        CameraInfo = bag.msg_class("sensor_msgs/msg/CameraInfo")
        JointState = bag.msg_class("sensor_msgs/msg/JointState")
        TF = bag.msg_class("tf2_msgs/msg/TFMessage")
        TS = bag.msg_class("geometry_msgs/msg/TransformStamped")
        PoseStamped = bag.msg_class("geometry_msgs/msg/PoseStamped")
        t0 = int(min(seq.joint_stamps_ns[0], seq.frame_stamps_ns[0]))
        moving = seq.T_world_hand_tf is not None
        static = (M.make_transform_stamped(seq.T_cam_world, t0, cam, seq.world_frame, TS) if moving else
                  M.make_transform_stamped(seq.T_cam_hand_published, t0, cam, seq.hand_frame, TS))
        bag.write(B.TOPIC_TF_STATIC, "tf2_msgs/msg/TFMessage", M.make_tf_message([static], TF), t0)

        def write_joint_state(j):
            tj = int(seq.joint_stamps_ns[j])
            bag.write(B.TOPIC_JOINT_STATES, "sensor_msgs/msg/JointState",
                      M.make_joint_state(seq.joint_names, seq.joint_positions[j], tj, JointState), tj)
            if moving:   # the arm's robot_state_publisher: world -> hand base at the joint-state stamps
                tf = M.make_transform_stamped(seq.T_world_hand_tf[j], tj, seq.world_frame, seq.hand_frame, TS)
                bag.write(B.TOPIC_TF, "tf2_msgs/msg/TFMessage", M.make_tf_message([tf], TF), tj)
        frames = (None for _ in range(seq.num_frames)) if seq.rgb is not None else iter_rendered_frames(seq)
        j = 0
        Nj = len(seq.joint_stamps_ns)
        for k, fr in enumerate(frames):
            t = int(seq.frame_stamps_ns[k])
            while j < Nj and seq.joint_stamps_ns[j] <= t:   # joint states up to this image, in time order
                write_joint_state(j)
                j += 1
            if fr is None:
                fr = dict(rgb=seq.rgb[k], depth_mm=seq.depth_mm[k], object_mask=seq.object_mask[k],
                          hand_mask=seq.hand_mask[k])
            info = M.make_camera_info(seq.K, seq.width, seq.height, CameraInfo, frame_id=cam, stamp_ns=t)
            bag.write(B.TOPIC_COLOR_IMAGE, "sensor_msgs/msg/Image", M.numpy_to_image(fr["rgb"], "rgb8", t, cam, Image), t)
            bag.write(B.TOPIC_COLOR_INFO, "sensor_msgs/msg/CameraInfo", info, t)
            bag.write(B.TOPIC_DEPTH_IMAGE, "sensor_msgs/msg/Image", M.numpy_to_image(fr["depth_mm"], "16UC1", t, cam, Image), t)
            bag.write(B.TOPIC_DEPTH_INFO, "sensor_msgs/msg/CameraInfo", info, t)
            bag.write(B.TOPIC_GT_OBJECT_POSE, "geometry_msgs/msg/PoseStamped",
                      M.make_pose_stamped(seq.T_cam_obj[k], t, cam, PoseStamped), t)
            for topic, mask in ((B.TOPIC_GT_OBJECT_MASK, fr["object_mask"]), (B.TOPIC_GT_HAND_MASK, fr["hand_mask"])):
                bag.write(topic, "sensor_msgs/msg/Image",
                          M.numpy_to_image(mask.astype(np.uint8) * 255, "mono8", t, cam, Image), t)
            if progress is not None:
                progress(k + 1, seq.num_frames)
        while j < Nj:
            write_joint_state(j)
            j += 1
    (path / SIDECAR_NAME).write_text(json.dumps(seq.metadata(), indent=1))
    return path


def read_sidecar(bag_path) -> dict:
    """The ``hp_ros_synth.json`` metadata written next to a synthetic bag."""
    p = Path(bag_path)
    p = p if p.is_dir() else p.parent
    f = p / SIDECAR_NAME
    if not f.is_file():
        raise FileNotFoundError(f"no {SIDECAR_NAME} in {p}: not a bag written by hp-ros synth")
    return json.loads(f.read_text())
