"""Synthetic generator speed and physical plausibility.

Prints per-object figures; the LAST line is one JSON object with keys
``gen_10s_norender_s`` (10 s sequence without rendering, models cached), ``render_frame_ms``
(one 640x480 frame: ray cast + shading + depth noise), ``max_penetration_mm`` (over seeds and
both built-in objects), ``min_contacts`` (hand samples in contact, min over held frames).
"""
import json
import time

import numpy as np

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
    next(frames)
    t = time.perf_counter()
    n = 10
    for _ in range(n):
        next(frames)
    render_ms = (time.perf_counter() - t) / n * 1e3
    print(f"render 640x480: {render_ms:.1f} ms per frame")
    print(json.dumps({"gen_10s_norender_s": round(float(np.median(gen)), 3), "render_frame_ms": round(render_ms, 1),
                      "max_penetration_mm": round(max(pen), 2), "min_contacts": int(min(ncont))}))


if __name__ == "__main__":
    main()
