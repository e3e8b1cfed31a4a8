"""Synthetic Allegro in-hand manipulation sequences with ground truth (ROS-free).

``generate_sequence(SynthConfig(...)) -> SynthSequence``; rendering is exact ray casting
(:mod:`hp_ros.core.raycast`); :func:`write_sequence_bag` turns a sequence into a rosbag2.

What each part of a sequence means is documented where it is made:

============== ============================================================================
module          what lives there
============== ============================================================================
``data``        :class:`SynthConfig` (input), :class:`SynthSequence` (output), instance ids
``scenario``    scene and frames: grasp planning, object placement, camera pose, calibration
                error, contact samples and IK handles at the grasp
``motion``      trajectories over time: approach, hold/lift, in-hand rotation (IK), the object
                carried by the Kabsch fit of the contacts, slips, penetration check
``sensor``      RealSense-like noise: depth noise, holes, mm rounding; RGB noise; encoder noise
``render``      ray-cast frames: appearance (light, background), shading, markers
``writer``      rosbag2 output and the JSON sidecar
``sequence``    :func:`generate_sequence`, composing the above in random-stream order
``assets``      cached hand / object / SDF models; single-threaded torch
``geometry``    pose helpers and :func:`kabsch`
============== ============================================================================
"""
from __future__ import annotations

from .assets import _object_model, _single_thread_torch  # noqa: F401 - imported from here by tests/benchmarks
from .data import (DEFAULT_MARKER_COLORS, INSTANCE_BACKGROUND, INSTANCE_HAND, INSTANCE_MARKERS, INSTANCE_OBJECT,
                   SynthConfig, SynthSequence)
from .geometry import kabsch
from .render import iter_rendered_frames, render_frame
from .render import _background_mesh, _FrameRenderer, _shade_linear  # noqa: F401 - imported from here by tests
from .sequence import generate_sequence
from .writer import SIDECAR_NAME, read_sidecar, write_sequence_bag

__all__ = ["SynthConfig", "SynthSequence", "generate_sequence", "iter_rendered_frames", "render_frame",
           "write_sequence_bag", "kabsch", "INSTANCE_OBJECT", "INSTANCE_HAND", "INSTANCE_MARKERS",
           "INSTANCE_BACKGROUND", "DEFAULT_MARKER_COLORS", "SIDECAR_NAME", "read_sidecar"]
