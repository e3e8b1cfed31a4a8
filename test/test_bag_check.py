"""``hp-ros check-bag``: a synthetic bag passes; a bag with what labs get wrong is reported (issue 24)."""
from __future__ import annotations

import numpy as np

from hp_ros import graph
from hp_ros.io import msgs as M


def test_a_synthetic_bag_passes(tmp_path):
    from hp_ros.core import synth
    from hp_ros.io.bag_check import ERROR, WARN, check_bag

    seq = synth.generate_sequence(synth.SynthConfig(duration_s=0.5, seed=0))
    synth.write_sequence_bag(seq, tmp_path / "bag")
    findings = check_bag(tmp_path / "bag")
    assert not [f for f in findings if f.level in (ERROR, WARN)], "\n".join(map(str, findings))
    assert any("wonik naming" in f.text for f in findings)


def test_what_labs_get_wrong_is_reported(tmp_path, capsys):
    """No /tf_static, no depth, a colour image in a depth encoding and another frame, unknown joint
    names, joint states stamped 80 ms off the images' clock."""
    from hp_ros.io.bag import BagWriter
    from hp_ros.tools import check_bag as tool

    t0 = 1_700_000_000_000_000_000
    with BagWriter(tmp_path / "bad") as bag:
        Img, CI, JS = (bag.msg_class(f"sensor_msgs/msg/{n}") for n in ("Image", "CameraInfo", "JointState"))
        K = np.array([[615.0, 0, 320], [0, 615.0, 240], [0, 0, 1]])
        for k in range(30):
            t = t0 + k * 33_333_333
            bag.write(graph.CAMERA_TOPICS["color_image"], "sensor_msgs/msg/Image",
                      M.numpy_to_image(np.zeros((48, 64), np.uint16), "16UC1", t, "camera_link", Img), t)
            bag.write(graph.CAMERA_TOPICS["color_info"], "sensor_msgs/msg/CameraInfo",
                      M.make_camera_info(K, 640, 480, CI, stamp_ns=t), t)
        for k in range(100):
            t = t0 + k * 10_000_000
            bag.write(graph.JOINT_STATES, "sensor_msgs/msg/JointState",
                      M.make_joint_state([f"j{i}" for i in range(16)], np.zeros(16), t - 80_000_000, JS), t)
    from hp_ros.io.bag_check import ERROR, WARN, check_bag

    findings = check_bag(tmp_path / "bad")
    text = "\n".join(map(str, findings))
    errors = [f for f in findings if f.level == ERROR]
    assert any(f.what == "/tf_static" and "missing" in f.text for f in errors), text
    assert any("16UC1" in f.text and "not one of" in f.text for f in errors), text
    assert any("frame_id ['camera_link']" in f.text for f in errors), text
    assert any("match neither" in f.text for f in errors), text
    warns = [f for f in findings if f.level == WARN]
    assert any(f.what == graph.CAMERA_TOPICS["depth_image"] and "missing" in f.text for f in warns), text
    assert any(f.what == "clocks" and "-80 ms apart" in f.text for f in warns), text
    # the command exits non-zero and prints every finding
    assert tool.run(type("A", (), dict(bag=str(tmp_path / "bad"), seconds=10.0, camera_namespace="/camera/camera",
                                       joint_states=graph.JOINT_STATES, camera_frame=graph.CAMERA_FRAME,
                                       hand_frame="ah_palm_link", camera_to_hand=False))) == 1
    assert "error(s)" in capsys.readouterr().out
