"""Synthetic generator speed and physical plausibility.

Prints per-object figures; the LAST line is one JSON object with keys
``gen_10s_norender_s`` (10 s sequence without rendering, models cached), ``render_frame_ms``
(one 640x480 frame: ray cast + shading + depth noise, wall clock, mean over 20 frames),
``render_frame_cpu_ms`` (process CPU time per frame summed over all threads: the wall time to
expect on an idle machine with one core; divide the ray-cast share by ``render_threads`` for
more cores), ``render_threads`` (concurrent ray-cast launches), ``load_avg_1m`` (system load
when rendering was measured: on this 2-core machine a load of N makes wall times ~N/2 x the idle
figure), ``max_penetration_mm`` (over seeds and both built-in objects), ``min_contacts`` (hand
samples in contact, min over held frames).
"""
import json
import os
import time

import numpy as np

from hp_ros.core.raycast import default_threads
from hp_ros.core.synth import SynthConfig, generate_sequence, iter_rendered_frames


def main():
    gen, pen, ncont = [], [], []
    for obj in ("builtin:cracker_box", "builtin:soup_can"):
        generate_sequence(SynthConfig(object=obj, render=False, duration_s=1.0))  # load + cache models
        for seed in range(4):
            t = time.perf_counter()
            s = generate_sequence(SynthConfig(object=obj, seed=seed, render=False))
            gen.append(time.perf_counter() - t)
            pen.append(float(s.penetration_mm.max()))
            ncont.append(int(s.n_contacts[s.in_contact].min()))
            print(f"{obj} seed {seed}: {gen[-1]:.2f} s, max penetration {pen[-1]:.2f} mm, "
                  f"contacts >= {ncont[-1]}, fingers {s.contact_fingers.astype(int).tolist()}, "
                  f"motion scale {s.scene['motion_scale']:.2f}")
    s = generate_sequence(SynthConfig(seed=0, render=False))
    frames = iter_rendered_frames(s)
    next(frames)  # first frame: renderer set-up and the cached background layer
    n = 20
    load = os.getloadavg()[0]
    t, c = time.perf_counter(), time.process_time()
    for _ in range(n):
        next(frames)
    render_ms = (time.perf_counter() - t) / n * 1e3
    render_cpu_ms = (time.process_time() - c) / n * 1e3
    load = (load + os.getloadavg()[0]) / 2
    print(f"render 640x480: {render_ms:.1f} ms per frame wall, {render_cpu_ms:.1f} ms CPU "
          f"({default_threads()} ray-cast threads, load average {load:.1f})")
    print(json.dumps({"gen_10s_norender_s": round(float(np.median(gen)), 3), "render_frame_ms": round(render_ms, 1),
                      "render_frame_cpu_ms": round(render_cpu_ms, 1), "render_threads": default_threads(),
                      "load_avg_1m": round(load, 2), "max_penetration_mm": round(max(pen), 2),
                      "min_contacts": int(min(ncont))}))


if __name__ == "__main__":
    main()
