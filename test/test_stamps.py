"""Stamps that make sense (issue 28, finding 5): the ROS-free stamp-jump detector resets only on a
sustained jump of the timeline confirmed on several streams, never on isolated bad stamps, and
still resets on a genuine bag loop."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hp_ros.io.stamps import ACCEPT, REJECT, RESET, StampJumpDetector

T0 = 1_700_000_000_000_000_000
MS = 1_000_000

# a 100 Hz joint stream and a 30 Hz camera stream over 2 s, in arrival order
CLEAN = sorted([("joint_states", T0 + k * 10 * MS) for k in range(200)]
               + [("camera_info", T0 + k * 33 * MS) for k in range(60)]
               + [("colour", T0 + k * 33 * MS + MS) for k in range(60)], key=lambda m: m[1])

BAD_STAMP = st.one_of(
    st.just(0),                                                     # header not set
    st.integers(1, T0 // 2),                                        # ancient
    st.integers(-3000, 3000).map(lambda d: d * 10 * MS),            # offset within +-30 s (from the current)
    st.integers(T0 * 2, 2**62),                                     # far future
)


@settings(max_examples=200, deadline=None)
@given(bad=st.lists(st.tuples(st.integers(0, len(CLEAN) - 1), st.sampled_from(["joint_states", "camera_info", "colour"]),
                              BAD_STAMP), min_size=1, max_size=60))
def test_isolated_bad_stamps_never_reset_and_good_ones_pass(bad):
    """Bad stamps (zero, ancient, far future, seconds off) mixed anywhere into a clean stream: no reset,
    and every clean message is accepted. Offsets are drawn relative to the clean message they follow."""
    det = StampJumpDetector(max_jump_ns=500 * MS, confirm=5)
    inject = {}
    for i, stream, s in bad:
        inject.setdefault(i, []).append((stream, s))
    verdicts = []
    for i, (stream, stamp) in enumerate(CLEAN):
        verdicts.append(det.check(stream, stamp).verdict)
        for bstream, s in inject.get(i, []):
            s = stamp + s if abs(s) <= 30_000 * MS else s
            v = det.check(bstream, s).verdict
            assert v != RESET, (bstream, s)
    assert det.resets == 0
    assert verdicts.count(ACCEPT) == len(CLEAN), "a clean message was refused after a bad one"


def test_bag_loop_resets_once_and_everything_flows_after():
    """A genuine loop: every stream 1 s back (and advancing from there) resets exactly once, within
    ``confirm`` messages of each stream; afterwards every message is accepted."""
    det = StampJumpDetector(max_jump_ns=500 * MS, confirm=5)
    for stream, s in CLEAN:
        assert det.check(stream, s).verdict == ACCEPT
    end = CLEAN[-1][1]
    looped = [(stream, s - 1000 * MS) for stream, s in CLEAN if s > end - 900 * MS]  # replay of the tail, 1 s back
    verdicts = [det.check(stream, s).verdict for stream, s in looped]
    assert verdicts.count(RESET) == 1 and det.resets == 1
    first_reset = verdicts.index(RESET)
    # confirmed once joint states (100 Hz) and a camera stream (30 Hz) had 5 each: ~170 ms of the loop
    assert first_reset < 30, first_reset
    # the third stream re-joins the new timeline at its first message; nothing is refused after
    assert all(v == ACCEPT for v in verdicts[first_reset + 1:]), verdicts[first_reset:]


def test_one_stream_pausing_rejoins_without_reset():
    """The camera pauses 3.6 s while the joint states go on: its stamps jump forward on their own,
    up to the joint states' time - catching up, accepted at once, no reset."""
    det = StampJumpDetector(max_jump_ns=500 * MS, confirm=5)
    for k in range(100):
        det.check("joint_states", T0 + k * 10 * MS)
        if k % 3 == 0 and k < 30:
            det.check("camera_info", T0 + k * 10 * MS)
    for k in range(100, 400):  # camera silent for 3.6 s
        det.check("joint_states", T0 + k * 10 * MS)
    verdicts = [det.check("camera_info", T0 + 3950 * MS + k * 33 * MS).verdict for k in range(8)]
    assert det.resets == 0 and set(verdicts) == {ACCEPT}  # catching up with the joint states: at once


def test_sustained_jump_on_one_stream_alone_does_not_reset():
    """A colleague's publisher sending a consistent old timeline on one stream only (advancing,
    2 s back): refused, no reset, while the other streams are not confirming it."""
    det = StampJumpDetector(max_jump_ns=500 * MS, confirm=5)
    for stream, s in CLEAN[:200]:
        det.check(stream, s)
    now = CLEAN[199][1]
    verdicts = [det.check("joint_states", now - 2000 * MS + k * 10 * MS).verdict for k in range(50)]
    assert set(verdicts) == {REJECT} and det.resets == 0
    assert det.check("camera_info", now + 33 * MS).verdict == ACCEPT


@pytest.mark.parametrize("bad", [0, -5])
def test_zero_and_negative_stamps_are_refused(bad):
    det = StampJumpDetector()
    v = det.check("joint_states", bad)
    assert v.verdict == REJECT and v.kind in ("stamp_zero", "stamp_negative")


def test_a_lagging_stream_catching_up_is_no_jump():
    """The segmentation falls 1.5 s behind the camera and drops its backlog: its observations jump
    forward 1.2 s on two streams at once (object and fingertips), up to the camera's time - no reset."""
    det = StampJumpDetector(max_jump_ns=500 * MS, confirm=5)
    for k in range(100):
        t = T0 + k * 33 * MS
        det.check("camera_info", t)
        if k < 55:  # the observations lag ever further behind
            det.check("object", T0 + k * 20 * MS)
            det.check("fingertips", T0 + k * 20 * MS)
    verdicts = [det.check(s, T0 + (88 + k) * 33 * MS).verdict for k in range(8) for s in ("object", "fingertips")]
    assert set(verdicts) == {ACCEPT} and det.resets == 0


def test_a_stream_anchored_on_a_stray_rejoins_the_others():
    """A stream whose first message was a stray (an hour ahead): its real messages are refused until
    ``confirm`` of them agree with another stream's timeline, then it re-joins - no reset."""
    det = StampJumpDetector(max_jump_ns=500 * MS, confirm=5)
    for k in range(10):
        det.check("joint_states", T0 + k * 10 * MS)
    det.resets = 0
    det.newest["colour"] = T0 + 3600 * 10 ** 9  # anchored on a stray before the fix of the others
    verdicts = [det.check("colour", T0 + 100 * MS + k * 33 * MS).verdict for k in range(6)]
    assert verdicts == [REJECT] * 4 + [ACCEPT] * 2 and det.rejoined == 1 and det.resets == 0


def test_a_stream_read_in_batches_continues_after_the_gap_between_takes():
    """The refinement node takes its readers' histories only for a request, seconds apart: the gap is
    no jump; a stray inside the batch is still refused."""
    det = StampJumpDetector(max_jump_ns=500 * MS, confirm=5)
    for k in range(30):
        det.check("rgb", T0 + k * 33 * MS)
    later = [T0 + 60 * 10 ** 9 + k * 100 * MS for k in range(30)]  # 3 s of history in one take
    batch = later[:10] + [T0 + 7200 * 10 ** 9] + later[10:]
    det.skip_gap("rgb", batch)
    verdicts = [det.check("rgb", s).verdict for s in batch]
    assert verdicts.count(REJECT) == 1 and verdicts[10] == REJECT and det.resets == 0
