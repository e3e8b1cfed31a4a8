"""TransformBuffer (hp_ros.core.tf_buffer): tf2's lookup semantics - static and dynamic edges,
interpolation at a stamp, chains through a common parent, Time(0) = latest, extrapolation and
lookup errors; HandBaseTrack on top of it."""
from __future__ import annotations

import math

import numpy as np
import pytest

from hp_ros.core.ekf.hand_base import HandBaseTrack
from hp_ros.core.tf_buffer import ExtrapolationError, TransformBuffer, interpolate_pose


def _pose(rz: float = 0.0, t=(0.0, 0.0, 0.0)) -> np.ndarray:
    c, s = math.cos(rz), math.sin(rz)
    T = np.eye(4)
    T[:3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    T[:3, 3] = t
    return T


S = 1_000_000_000


def _buffer():
    b = TransformBuffer(cache_time_s=10.0)
    b.set_transform(_pose(0.0, (0.0, 0.0, 1.0)), "camera", "world", 0, static=True)   # camera -> world
    b.set_transform(_pose(0.0, (0.0, 0.0, 0.0)), "world", "hand", 1 * S)
    b.set_transform(_pose(math.pi / 2, (0.2, 0.0, 0.0)), "world", "hand", 2 * S)
    return b


def test_interpolates_between_samples_and_chains_through_static_edges():
    b = _buffer()
    T = b.lookup_transform("camera", "hand", int(1.5 * S))
    np.testing.assert_allclose(T[:3, 3], [0.1, 0.0, 1.0], atol=1e-12)          # halfway, plus the static edge
    np.testing.assert_allclose(T[:3, :3], _pose(math.pi / 4)[:3, :3], atol=1e-9)  # slerp: half the turn
    # exact samples and the inverse direction
    np.testing.assert_allclose(b.lookup_transform("camera", "hand", 2 * S), _pose(0, (0, 0, 1)) @ _pose(math.pi / 2, (0.2, 0, 0)))
    np.testing.assert_allclose(b.lookup_transform("hand", "camera", 2 * S),
                               np.linalg.inv(b.lookup_transform("camera", "hand", 2 * S)), atol=1e-12)


def test_time_zero_is_the_latest_common_time():
    b = _buffer()
    np.testing.assert_allclose(b.lookup_transform("camera", "hand", 0), b.lookup_transform("camera", "hand", 2 * S))
    assert b.latest_stamp("camera", "hand") == 2 * S and b.oldest_stamp("camera", "hand") == 1 * S


def test_extrapolation_raises_both_ways_and_static_is_valid_always():
    b = _buffer()
    with pytest.raises(ExtrapolationError, match="past"):
        b.lookup_transform("camera", "hand", S - 1)
    with pytest.raises(ExtrapolationError, match="future"):
        b.lookup_transform("camera", "hand", 2 * S + 1)
    assert not b.can_transform("camera", "hand", 3 * S)
    np.testing.assert_allclose(b.lookup_transform("camera", "world", 123 * S)[:3, 3], [0, 0, 1])
    assert b.is_static("camera", "world") and not b.is_static("camera", "hand")


def test_unknown_or_disconnected_frames_raise_lookup_error():
    b = _buffer()
    with pytest.raises(LookupError, match="does not exist"):
        b.lookup_transform("camera", "nowhere", 0)
    b.set_transform(np.eye(4), "other_root", "island", 0, static=True)
    with pytest.raises(LookupError, match="not connected"):
        b.lookup_transform("camera", "island", 0)
    with pytest.raises(ValueError):
        b.set_transform(np.full((4, 4), np.nan), "a", "b", 0)


def test_old_samples_leave_the_cache():
    b = TransformBuffer(cache_time_s=1.0)
    for k in range(30):
        b.set_transform(_pose(0, (0.01 * k, 0, 0)), "world", "hand", k * S // 10)
    assert b.oldest_stamp("world", "hand") >= 19 * S // 10   # only the last second
    with pytest.raises(ExtrapolationError):
        b.lookup_transform("world", "hand", S // 10)


def test_interpolate_pose_takes_the_short_arc():
    T0, T1 = _pose(math.radians(170)), _pose(math.radians(-170))
    T = interpolate_pose(T0, T1, 0.5)
    assert abs(abs(math.atan2(T[1, 0], T[0, 0])) - math.pi) < 1e-9     # through 180 deg, not through 0


def test_hand_base_track_holds_the_newest_value_and_counts_it():
    track = HandBaseTrack(_buffer(), "camera", "hand")
    assert track.moving and track.covers(2 * S) and not track.covers(2 * S + 1)
    np.testing.assert_allclose(track.at(5 * S), track.at(2 * S))
    assert track.held == 1
    np.testing.assert_allclose(track.at(0), track.at(2 * S))
    static = TransformBuffer()
    static.set_transform(_pose(0, (0, 0, 1)), "camera", "hand", 0, static=True)
    st = HandBaseTrack(static, "camera", "hand")
    assert not st.moving and st.covers(10 * S) and st.at(10 * S) is not None
    assert HandBaseTrack(TransformBuffer(), "camera", "hand").at(S) is None


def test_hand_base_track_follows_the_frame_tree_as_it_changes():
    """``moving`` is kept per frame-tree change (it is asked several times per frame): it must
    still follow a tree that is connected later, and an edge that turns from static to /tf and back."""
    b = TransformBuffer()
    track = HandBaseTrack(b, "camera", "hand")
    assert not track.moving                                    # no frames at all
    b.set_transform(_pose(0, (0, 0, 1)), "camera", "world", 0, static=True)
    assert not track.moving                                    # hand not connected yet
    b.set_transform(_pose(0, (0.1, 0, 0)), "world", "hand", S)
    assert track.moving                                        # connected through a /tf edge
    b.set_transform(_pose(0, (0.2, 0, 0)), "world", "hand", 2 * S)
    assert track.moving                                        # more samples: the same tree
    b.set_transform(_pose(0, (0.2, 0, 0)), "world", "hand", 0, static=True)
    assert not track.moving and b.is_static("camera", "hand")  # the edge became static
    b.set_transform(_pose(0, (0.3, 0, 0)), "world", "hand", 3 * S)
    assert track.moving and not b.is_static("camera", "hand")  # and /tf again
