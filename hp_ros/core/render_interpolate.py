"""Perspective-correct interpolation of depth and per-vertex values for the renderer
(:mod:`hp_ros.core.render`, stage 2 of its module docstring): one autograd node with a hand-written
backward that reduces pixels to per-face moments before scattering to vertices."""
from __future__ import annotations

import torch


class _Interpolate(torch.autograd.Function):
    """Perspective-correct interpolation of depth and per-vertex values at covered pixels,
    with a hand-written backward (one node instead of ~60 small autograd ops).

    With screen barycentrics ``l_k = (a_k x + b_k y + c_k) / A`` of the pixel in its face
    (``A = sum c_k``, twice the signed area), ``w_k = 1 / z_k``: ``invz = sum l_k w_k``,
    ``depth = 1 / invz``, ``value = sum l_k w_k v_k / invz``. Backward uses
    ``d l_k / d p_j = -l_j grad(l_k)`` (moving vertex ``j`` by ``dp`` moves the barycentrics
    like moving the pixel by ``-l_j dp``).

    Inputs: ``us, vs, z`` ``(N,)`` flattened vertex data, ``values`` ``(C, N)`` or None,
    ``fidx`` ``(n_vis, 3)`` vertex rows of the visible faces, ``pix_face`` ``(P,)`` index into
    them, ``px, py`` ``(P,)`` pixel centres, ``near``. Outputs: depth ``(P,)``, values
    ``(C, P)`` (``(0, P)`` without values).
    """

    @staticmethod
    def forward(ctx, us, vs, z, values, fidx, pix_face, px, py, near):
        cols = [fidx[:, k] for k in range(3)]
        x = [us.index_select(0, c) for c in cols]
        y = [vs.index_select(0, c) for c in cols]
        c = [x[1] * y[2] - x[2] * y[1], x[2] * y[0] - x[0] * y[2], x[0] * y[1] - x[1] * y[0]]
        area2 = c[0] + c[1] + c[2]
        inv_a = 1.0 / torch.where(area2.abs() > 1e-12, area2, torch.ones_like(area2))
        zk = [z.index_select(0, col) for col in cols]
        C = 0 if values is None else values.shape[0]
        # per-face table (rows: grad(l_k) x, y, l_k offset, w_k, v_kc), gathered per pixel
        rows = [(y[1] - y[2]) * inv_a, (y[2] - y[0]) * inv_a, (y[0] - y[1]) * inv_a,
                (x[2] - x[1]) * inv_a, (x[0] - x[2]) * inv_a, (x[1] - x[0]) * inv_a,
                c[0] * inv_a, c[1] * inv_a, c[2] * inv_a,
                *(torch.where(zi > near, 1.0 / zi, torch.ones_like(zi)) for zi in zk)]
        if C:
            rows += [values.index_select(1, col) for col in cols]  # (C, n_vis) each
            table = torch.cat([torch.stack(rows[:12]), *rows[12:]])
        else:
            table = torch.stack(rows)
        tp = table.index_select(1, pix_face)  # (12 + 3 C, P)
        ga, gb = tp[0:3], tp[3:6]
        lam = ga * px + gb * py + tp[6:9]  # (3, P) screen barycentrics
        om = tp[9:12]
        lw = lam * om
        depth = 1.0 / lw.sum(0)
        if C:
            vk = tp[12:].reshape(3, C, -1)
            attr = (lw[:, None] * vk).sum(0) * depth
        else:
            attr = us.new_zeros(0, px.shape[0])
        ctx.save_for_backward(fidx, pix_face, px, py, table, depth, attr)
        ctx.n_vertices = us.shape[0]
        ctx.C = C
        return depth, attr

    @staticmethod
    def backward(ctx, g_depth, g_attr):
        fidx, pix_face, px, py, table, depth, attr = ctx.saved_tensors
        C, nvis = ctx.C, table.shape[1]
        # per pixel: G = dL/d(invz, num_1..C) with depth = 1/invz, attr = num/invz
        g_invz = -g_depth * depth * depth
        if C:
            g_invz = g_invz - (g_attr * attr).sum(0) * depth
            G = torch.cat([g_invz[None], g_attr * depth])  # (1 + C, P)
        else:
            G = g_invz[None]
        # everything below is linear in G with per-face coefficients affine in the pixel
        # position: reduce to per-face moments M = sum_p [x, y, 1] (x) G  (3, 1 + C, n_vis)
        M = torch.zeros(3 * (1 + C), nvis, dtype=G.dtype).index_add_(
            1, pix_face, torch.cat([G * px, G * py, G])).reshape(3, 1 + C, nvis)
        ga, gb, gc, om = table[0:3], table[3:6], table[6:9], table[9:12]  # (3, n_vis) each
        ones = torch.ones_like(om[:, None])
        vext = torch.cat([ones, table[12:].reshape(3, C, nvis)], 1) if C else ones
        # T_j = sum_p l_j G  (3 j, 1 + C, n_vis)
        T = ga[:, None] * M[0] + gb[:, None] * M[1] + gc[:, None] * M[2]
        # d invz / d l_k = w_k, d num_c / d l_k = w_k v_kc; screen gradient of l_k = (ga, gb)
        alpha = ((om * ga)[:, None] * vext).sum(0)  # (1 + C, n_vis)
        beta = ((om * gb)[:, None] * vext).sum(0)
        # moving vertex j by dp moves the barycentrics like moving the pixel by -l_j dp
        g_x = -(alpha[None] * T).sum(1)  # (3 j, n_vis)
        g_y = -(beta[None] * T).sum(1)
        g_z = -(om * om) * (vext * T).sum(1)  # w = 1/z
        parts = [g_x[:, None], g_y[:, None], g_z[:, None]]
        if C:
            parts.append(om[:, None] * T[:, 1:])  # (3 j, C, n_vis)
        per_face = torch.cat(parts, 1).permute(0, 2, 1).reshape(3 * nvis, 3 + C)
        per_vert = torch.zeros(ctx.n_vertices, 3 + C, dtype=per_face.dtype).index_add_(
            0, fidx.t().reshape(-1), per_face)
        g_us, g_vs, g_zv = per_vert[:, 0], per_vert[:, 1], per_vert[:, 2]
        g_values = per_vert[:, 3:].t() if C else None
        return g_us, g_vs, g_zv, g_values, None, None, None, None, None
