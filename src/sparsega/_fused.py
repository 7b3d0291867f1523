"""Fused match losses of the sparse optimiser with hand-written backward passes (the optimiser's hot path).

The autograd version (:meth:`sparsega.optimize.SparseAligner.match_points` and friends) gathers 17 camera rows per
match side and records ~60 elementwise ops per point; its backward then scatters 16 per-point gradient rows back to
the images with ``index_add_``. Both the gathers and the scatters cost far more than the arithmetic.

Here the trusted matches are grouped by image pair and cut into fixed-length chunks (``MatchLayout``): inside a
chunk every match has the same two images, so the cameras are per-chunk (C,) quantities broadcast over the chunk's
(B,) points, 3x3 rotations apply as one batched matmul, and every per-camera gradient is a sum over the chunk's
points (a batched matmul or a row sum) followed by a tiny index_add of (17, 2C) chunk gradients onto the N images.
The only per-point gather/scatter left is the anchor depth. Padding slots have confidence 0 and finite dummy
values, so they contribute exactly 0 to the loss and the gradients.

Both sides of each chunk are stacked along the chunk axis: row ``c`` (side 0) and row ``C + c`` (side 1) hold the
two ends of the same matches, so arrays are (2C, B) or (2C, 3, B) with B contiguous.

Derivative conventions follow torch's autograd exactly (``clamp`` passes the gradient where ``min <= x <= max``,
the distance's square is clamped at 1e-30), so the fused losses are the naive ones up to float round-off.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

Tensor = torch.Tensor

_SQ_MIN = 1e-30  # the distance's square is clamped here (finite gradient at exactly zero distance)
_Z_MIN = 1e-3  # reprojection: camera depth clamp
_PIX_MIN, _PIX_MAX = -1000.0, 2000.0  # reprojection: pixel clamp


@dataclass(frozen=True)
class MatchLayout:
    """Trusted matches grouped by (image0, image1) pair and cut into chunks of ``chunk`` matches.

    Attributes:
        img: (2C,) int64 image of each chunk row (side 0 rows, then side 1 rows).
        x, y: (2C, B) pixel coordinates of each match side (0 on padding).
        off_m1: (2C, B) canonical depth ratio minus one (0 on padding).
        anchor: (2C, B) int64 global anchor index (a valid anchor of the row's image on padding).
        conf: (C, B) match confidence, 0 on padding.
        conf_sum: sum of the confidences (Python float).
        chunk: B.
    """

    img: Tensor
    x: Tensor
    y: Tensor
    off_m1: Tensor
    anchor: Tensor
    conf: Tensor
    conf_sum: float
    chunk: int

    @property
    def n_chunks(self) -> int:
        return int(self.conf.shape[0])

    @functools.cached_property
    def arrays(self) -> tuple[np.ndarray, ...]:
        """``(img, x, y, off_m1, anchor, conf)`` as numpy arrays (zero-copy views of the CPU tensors, made once)."""
        return tuple(t.contiguous().numpy() for t in (self.img, self.x, self.y, self.off_m1, self.anchor, self.conf))


def choose_chunk(n_matches: int, n_pairs: int) -> int:
    """Chunk length: a power of two near a quarter of the mean matches per pair, in [32, 512] (bounds the
    padding to ~1/8 of the matches while keeping the batched matmuls efficient)."""
    if n_matches == 0 or n_pairs == 0:
        return 32
    target = n_matches / (4 * n_pairs)
    return int(min(512, max(32, 2 ** math.floor(math.log2(max(target, 1.0))))))


def build_layout(m_img: Tensor, m_xy: Tensor, m_anchor: Tensor, m_off: Tensor, m_conf: Tensor,
                 chunk: int | None = None, seed: int = 0) -> MatchLayout:
    """Chunked layout of K matches: ``m_img (2, K)``, ``m_xy (2, K, 2)``, ``m_anchor (2, K)``, ``m_off (2, K)``,
    ``m_conf (K,)`` (all the trusted matches, any order).

    Matches are shuffled (fixed seed) inside each pair: the anchor gradient's ``index_add_`` is several times
    slower on CPU with sorted indices, and the order inside a chunk is otherwise irrelevant.
    """
    dev, dt = m_xy.device, m_xy.dtype
    img = m_img.cpu().numpy().astype(np.int64)
    k = img.shape[1]
    n_img = int(img.max()) + 1 if k else 1
    rng = np.random.default_rng(seed)
    shuffle = rng.permutation(k)
    key = img[0, shuffle] * n_img + img[1, shuffle]
    order = shuffle[np.argsort(key, kind="stable")]
    key = img[0, order] * n_img + img[1, order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if k else np.zeros(0, np.int64)
    lengths = np.diff(np.r_[starts, k])
    b = chunk or choose_chunk(k, len(starts))
    n_chunks_per = -(-lengths // b)
    chunk_base = np.r_[0, np.cumsum(n_chunks_per)[:-1]].astype(np.int64)
    n_chunks = int(n_chunks_per.sum())
    seg = np.repeat(np.arange(len(starts)), lengths)
    rank = np.arange(k) - starts[seg]
    pos = torch.as_tensor((chunk_base[seg] + rank // b) * b + rank % b, device=dev)  # flat slot of order[i]
    order_t = torch.as_tensor(order, device=dev)
    chunk_seg = np.repeat(np.arange(len(starts)), n_chunks_per)
    first = order[starts[chunk_seg]] if n_chunks else np.zeros(0, np.int64)  # a real match of each chunk

    def fill(values: Tensor, pad: Tensor) -> Tensor:
        """(2, K) per-side values -> (2C, B), padding slots taking the per-chunk ``pad (2, C)``."""
        out = pad.unsqueeze(-1).expand(2, n_chunks, b).reshape(2, n_chunks * b).clone()
        out[:, pos] = values[:, order_t]
        return out.reshape(2 * n_chunks, b)

    first_t = torch.as_tensor(first, device=dev)
    zero = torch.zeros((2, n_chunks), device=dev, dtype=dt)
    conf = torch.zeros(n_chunks * b, device=dev, dtype=m_conf.dtype)
    conf[pos] = m_conf[order_t]
    return MatchLayout(
        img=torch.as_tensor(img[:, first].reshape(-1), device=dev),
        x=fill(m_xy[..., 0], zero), y=fill(m_xy[..., 1], zero),
        off_m1=fill(m_off - 1, zero),
        anchor=fill(m_anchor, m_anchor[:, first_t]),
        conf=conf.reshape(n_chunks, b),
        conf_sum=float(m_conf.sum()),
        chunk=b,
    )


def gamma_value_and_slope(r: Tensor, gamma: float) -> tuple[Tensor, Tensor | float, float]:
    """``(r + o)^gamma`` and ``rho'(r)`` of the gamma loss ``rho(r) = (r + o)^gamma - o^gamma`` (see
    :func:`sparsega.optimize.gamma_loss`), and the constant ``o^gamma``. The common gammas avoid ``pow`` (an order
    of magnitude slower than ``sqrt`` on CPU)."""
    if gamma == 1:
        return r, 1.0, 0.0
    off = (1.0 / gamma) ** (1.0 / (gamma - 1.0))
    t = r + off
    if gamma == 2:
        return t * t, t.mul_(2), off**2
    if gamma == 1.5:
        s = t.sqrt()
        return t.mul_(s), s.mul_(1.5), off**1.5
    if gamma == 0.5:
        s = t.sqrt_()
        return s, s.reciprocal().mul_(0.5), off**0.5
    tg1 = t.log().mul_(gamma - 1).exp_()
    return t.mul_(tg1), tg1.mul_(gamma), off**gamma


def _ge_mask(x: Tensor, lo: float) -> Tensor | None:
    """``(x >= lo)`` as 0/1 of ``x``'s dtype, or None when it is all ones (skips the mask in the common case)."""
    if bool(x.min() >= lo):
        return None
    return torch.ge(x, lo, out=torch.empty_like(x))  # a float output is ~10x faster than bool + convert


def _in_mask(x: Tensor, lo: float, hi: float) -> Tensor | None:
    """``(lo <= x <= hi)`` as 0/1 of ``x``'s dtype, or None when it is all ones (torch's clamp gradient mask)."""
    mn, mx = torch.aminmax(x)
    if bool(mn >= lo) and bool(mx <= hi):
        return None
    m = torch.ge(x, lo, out=torch.empty_like(x))
    return m.mul_(torch.le(x, hi, out=torch.empty_like(x)))


def _swap(x: Tensor, c: int) -> Tensor:
    """Exchange the side-0 and side-1 halves of a (2C, ...) tensor (small tensors only)."""
    return torch.cat((x[c:], x[:c]))


class _FusedMatchLoss(torch.autograd.Function):
    """Stage-1 (3D distance) or stage-2 (reprojection) loss of all trusted matches, with an analytic backward.

    Both losses only depend on each match's two camera-frame points ``pc = d (u, v, 1)`` and the RELATIVE pose of
    the chunk's two cameras, ``R_rel = R_self^T R_other``, ``t_rel = R_self^T (t_other - t_self)``: the 3D distance
    is rotation invariant (measured in the side-0 camera frame) and the reprojection is of ``R_rel pc + t_rel``.
    Per point this is one (3x3) x (3, B) batched matmul forward and two backward (plus one for the intrinsics), and
    a few dozen elementwise ops on (2C, B) arrays; the backward runs with an upstream gradient of 1 and scales the
    small per-chunk results at the end. Relative-pose gradients go back to the two cameras as (2C, 3, 3) algebra.
    """

    @staticmethod
    def forward(ctx, table: Tensor, anchor_depth: Tensor, lay: MatchLayout, stage: int,  # type: ignore[override]
                gamma: float, intr_grad: bool) -> Tensor:
        c, b = lay.n_chunks, lay.chunk
        camt = table.index_select(1, lay.img).T.contiguous()  # (2C, 17)
        rot = camt[:, :9].reshape(2 * c, 3, 3).contiguous()
        f, ppx, ppy, r15 = (camt[:, k : k + 1] for k in range(12, 16))
        rot_o = _swap(rot, c)
        delta = _swap(camt[:, 9:12], c) - camt[:, 9:12]  # t_other - t_self
        rrel = torch.bmm(rot.transpose(1, 2), rot_o)
        trel = torch.bmm(rot.transpose(1, 2), delta.unsqueeze(-1))
        # camera-frame points of every match side: pc = (u d, v d, d)
        ad = anchor_depth.index_select(0, lay.anchor.view(-1)).view(2 * c, b)
        fac = torch.addcmul(torch.ones((), dtype=ad.dtype, device=ad.device), lay.off_m1, r15)
        pc = torch.empty((2 * c, 3, b), dtype=ad.dtype, device=ad.device)
        d = torch.mul(ad, fac, out=pc[:, 2])
        inv_f = f.reciprocal()
        u = (lay.x - ppx).mul_(inv_f)
        v = (lay.y - ppy).mul_(inv_f)
        torch.mul(u, d, out=pc[:, 0])
        torch.mul(v, d, out=pc[:, 1])
        ctx.pose = (rot, rot_o, delta, rrel)
        ctx.bp = (ad, fac, u, v, pc, inv_f)
        if stage == 1:
            # W0 - W1 = R0 (pc0 - R_rel pc1 - t_rel)
            e = torch.baddbmm(trel[:c], rrel[:c], pc[c:])
            torch.sub(pc[:c], e, out=e)
            sq = e[:, 0] * e[:, 0]
            sq.addcmul_(e[:, 1], e[:, 1]).addcmul_(e[:, 2], e[:, 2])
            sq_mask = _ge_mask(sq, _SQ_MIN)
            r = sq.clamp_min_(_SQ_MIN).sqrt_()
            rho, drho, rho0 = gamma_value_and_slope(r, gamma)
            loss = (torch.dot(lay.conf.view(-1), rho.view(-1)) - rho0 * lay.conf_sum) / lay.conf_sum
            ctx.loss_terms = (e, r, drho, sq_mask)
        else:
            # each side's camera sees the other side's point: P = R_rel pc_other + t_rel
            pcam = torch.empty_like(pc)
            torch.baddbmm(trel[:c], rrel[:c], pc[c:], out=pcam[:c])
            torch.baddbmm(trel[c:], rrel[c:], pc[:c], out=pcam[c:])
            z_mask = _ge_mask(pcam[:, 2], _Z_MIN)
            zc = pcam[:, 2].clamp_min(_Z_MIN)
            fz = f / zc
            uraw = torch.addcmul(ppx, pcam[:, 0], fz)
            vraw = torch.addcmul(ppy, pcam[:, 1], fz)
            u_mask = _in_mask(uraw, _PIX_MIN, _PIX_MAX)
            v_mask = _in_mask(vraw, _PIX_MIN, _PIX_MAX)
            eu = (uraw.clamp_(_PIX_MIN, _PIX_MAX) if u_mask is not None else uraw).sub_(lay.x)
            ev = (vraw.clamp_(_PIX_MIN, _PIX_MAX) if v_mask is not None else vraw).sub_(lay.y)
            sq = eu * eu
            sq.addcmul_(ev, ev)
            sq_mask = _ge_mask(sq, _SQ_MIN)
            r = sq.clamp_min_(_SQ_MIN).sqrt_()
            rho, drho, rho0 = gamma_value_and_slope(r, gamma)
            conf = lay.conf.view(-1)
            n = conf.shape[0]
            rho = rho.view(-1)
            loss = (torch.dot(conf, rho[:n]) + torch.dot(conf, rho[n:]) - 2 * rho0 * lay.conf_sum) \
                / (2 * lay.conf_sum)
            ctx.loss_terms = (pcam, zc, fz, eu, ev, r, drho, sq_mask, z_mask, u_mask, v_mask)
        ctx.lay, ctx.stage, ctx.intr_grad = lay, stage, intr_grad
        ctx.n_img, ctx.n_anchor = table.shape[1], anchor_depth.shape[0]
        return loss

    @staticmethod
    def backward(ctx, gout: Tensor):  # type: ignore[override]
        lay, c = ctx.lay, ctx.lay.n_chunks
        rot, rot_o, delta, rrel = ctx.pose
        ad, fac, u, v, pc, inv_f = ctx.bp
        g_cam = torch.zeros((2 * c, 17), dtype=rot.dtype, device=rot.device)  # per chunk-row table gradient
        g_rrel = torch.zeros_like(rrel)
        gpc = torch.empty_like(pc)  # dL/dpc
        if ctx.stage == 1:
            e, r, drho, sq_mask = ctx.loss_terms
            w = lay.conf / r
            if isinstance(drho, Tensor):
                w.mul_(drho)
            if sq_mask is not None:
                w.mul_(sq_mask)
            ge = torch.mul(e, w.unsqueeze(1), out=gpc[:c])  # dL/de = dL/dpc0; dL/dpc1 = -R_rel^T dL/de
            torch.bmm(rrel[:c].transpose(1, 2).neg(), ge, out=gpc[c:])
            g_rrel[:c] = torch.bmm(ge, pc[c:].transpose(1, 2)).neg_()
            g_trel = torch.cat((ge.sum(2).neg_(), ge.new_zeros((c, 3))))
            scale = 1 / lay.conf_sum
        else:
            pcam, zc, fz, eu, ev, r, drho, sq_mask, z_mask, u_mask, v_mask = ctx.loss_terms
            w = lay.conf.repeat(2, 1).div_(r)
            if isinstance(drho, Tensor):
                w.mul_(drho)
            if sq_mask is not None:
                w.mul_(sq_mask)
            gu = eu.mul_(w)
            gv = ev.mul_(w)
            if u_mask is not None:
                gu.mul_(u_mask)
            if v_mask is not None:
                gv.mul_(v_mask)
            h = gu * pcam[:, 0]
            h.addcmul_(gv, pcam[:, 1])
            hz = h.div_(zc)
            if ctx.intr_grad:
                g_cam[:, 12] = hz.sum(1)
                g_cam[:, 13] = gu.sum(1)
                g_cam[:, 14] = gv.sum(1)
            gp = pcam  # reuse: P is not needed any more
            torch.mul(gu, fz, out=gp[:, 0])
            torch.mul(gv, fz, out=gp[:, 1])
            torch.mul(hz, fz, out=gp[:, 2]).neg_()
            if z_mask is not None:
                gp[:, 2].mul_(z_mask)
            torch.bmm(gp[:c], pc[c:].transpose(1, 2), out=g_rrel[:c])
            torch.bmm(gp[c:], pc[:c].transpose(1, 2), out=g_rrel[c:])
            g_trel = gp.sum(2)
            torch.bmm(rrel[:c].transpose(1, 2), gp[:c], out=gpc[c:])
            torch.bmm(rrel[c:].transpose(1, 2), gp[c:], out=gpc[:c])
            scale = 1 / (2 * lay.conf_sum)
        # relative pose -> both cameras: R_rel = R_s^T R_o, t_rel = R_s^T (t_o - t_s)
        g_rot_o = torch.bmm(rot, g_rrel)
        g_t_o = torch.bmm(rot, g_trel.unsqueeze(-1)).squeeze(-1)
        g_rot_s = torch.bmm(rot_o, g_rrel.transpose(1, 2)).add_(delta.unsqueeze(-1) * g_trel.unsqueeze(1))
        g_cam[:, :9] = (g_rot_s + _swap(g_rot_o, c)).view(2 * c, 9)
        g_cam[:, 9:12] = _swap(g_t_o, c) - g_t_o
        # camera-frame points: pc = (u d, v d, d), u = (x - ppx) / f, d = ad (1 + off r15)
        gd = gpc[:, 0] * u
        gd.addcmul_(gpc[:, 1], v).add_(gpc[:, 2])
        if ctx.intr_grad:
            sm = torch.bmm(gpc, pc.transpose(1, 2))  # sm[a, b] = sum gpc_a pc_b
            inv_f = inv_f.squeeze(1)
            g_cam[:, 12] -= (sm[:, 0, 0] + sm[:, 1, 1]) * inv_f
            g_cam[:, 13] -= sm[:, 0, 2] * inv_f
            g_cam[:, 14] -= sm[:, 1, 2] * inv_f
            g_cam[:, 15] = (gd * ad).mul_(lay.off_m1).sum(1)
        g_ad = gd.mul_(fac)
        g_anchor = torch.zeros(ctx.n_anchor, dtype=g_ad.dtype, device=g_ad.device)
        g_anchor.index_add_(0, lay.anchor.view(-1), g_ad.view(-1), alpha=scale)
        g_anchor.mul_(gout)
        g_table = torch.zeros((ctx.n_img, 17), dtype=rot.dtype, device=rot.device)
        g_table.index_add_(0, lay.img, g_cam, alpha=scale)
        g_table.mul_(gout)
        ctx.pose = ctx.bp = ctx.loss_terms = None
        return g_table.T, g_anchor, None, None, None, None


def fused_match_loss(table: Tensor, anchor_depth: Tensor, layout: MatchLayout, stage: int, gamma: float,
                     intr_grad: bool = True) -> Tensor:
    """Confidence-weighted robust match loss (stage 1: 3D distance, stage 2: reprojection both ways) from the
    ``(17, N)`` camera table and the ``(A,)`` anchor depths; scalar. ``intr_grad=False`` skips the gradients of
    the intrinsic rows (12..15) of the table, for stages where no intrinsic is optimised."""
    if layout.n_chunks == 0:
        return table.new_zeros(())
    return _FusedMatchLoss.apply(table, anchor_depth, layout, stage, gamma, intr_grad)
