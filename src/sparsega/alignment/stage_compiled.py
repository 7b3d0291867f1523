"""Stage runner of the compiled CPU path: every iteration in numba on float64 numpy parameters (camera model,
match and fallback losses with their gradients, the camera model's reverse pass, Adam). No autograd graph and no
Python work per pair or image; used when ``loss_backend`` resolves to ``"kernel"`` and no known pose constrains
the chain (:meth:`.optimizer.SparseAligner.run_stage` dispatches)."""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

from .kernels import camera, fallback, match
from .kernels.common import KERNEL_GAMMAS, LOCK, gamma_offset, set_threads
from .kernels.layout import CameraConsts
from .losses import SCHEDULES
from .problem import AlignProblem, StageResult

if TYPE_CHECKING:
    from .optimizer import SparseAligner

log = logging.getLogger(__name__)

# the parameter arrays, in the compiled camera model's argument order
PARAMS = ("quats", "trans", "log_sizes", "log_focals", "pps", "core_depth")


def fallback_blocks(p: AlignProblem) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The fallback targets as :func:`.kernels.fallback.fallback_loss_and_grad` reads them, cut into blocks of
    constant (image, reference): ``starts (B+1,)``, ``img (B,)``, ``ref (B,)`` int64, ``fin (7, F)`` float64 rows
    ``x, y, offm1, target x, y, z, conf`` and ``anchors (F,)`` int64."""
    anc = p.fb_anchor.cpu().numpy().astype(np.int64)
    ref = p.fb_ref.cpu().numpy().astype(np.int64)
    img = p.anchor_img.cpu().numpy()[anc].astype(np.int64)
    f = len(anc)
    if f:
        change = np.flatnonzero((img[1:] != img[:-1]) | (ref[1:] != ref[:-1])) + 1
        starts = np.r_[0, change, f].astype(np.int64)
    else:
        starts = np.zeros(1, np.int64)
    fin = np.empty((7, f))
    fin[0:2] = p.fb_xy.cpu().double().numpy().T
    fin[2] = p.fb_off.cpu().double().numpy() - 1.0
    fin[3:6] = p.fb_target.cpu().double().numpy().T
    fin[6] = p.fb_conf.cpu().double().numpy()
    return starts, img[starts[:-1]], ref[starts[:-1]], fin, anc


def compiled_forward(P: dict[str, np.ndarray], consts: CameraConsts, table: np.ndarray, ad: np.ndarray) -> None:
    """Fill ``table (N, 17)`` and ``ad (A,)`` from the float64 parameters ``P`` by the compiled camera model."""
    camera.camera_forward_jit(
        *(P[k] for k in PARAMS),
        *consts.arrays(),
        consts.anchor_ptr,
        table,
        ad,
    )


def run_stage_compiled(
    al: SparseAligner, stage: int, names: list[str], niter: int, lr_base: float, gamma: float, name: str
) -> StageResult:
    """One stage with every iteration in compiled code: camera model, match and fallback losses with their
    gradients, the camera model's reverse pass and Adam, all float64 on numpy arrays (no autograd graph)."""
    cfg, p = al.cfg, al.p
    if al._np is None:
        al._np = {k: t.detach().cpu().to(torch.float64).numpy().copy() for k, t in al._params().items()}
    P = al._np
    consts = al._camera_consts()
    c_arrs = (*consts.arrays(), consts.anchor_ptr)
    lay_arrs = al.layout.arrays if al.n_ok else None
    scratch = al.layout.workspace() if al.n_ok else ()  # one per stage: reused by every iteration
    fb = fallback_blocks(p)
    fb_sum = float(fb[3][6].sum())
    fb_w = cfg.fallback_weight / fb_sum if (cfg.fallback_weight and fb_sum > 0) else 0.0
    fb_gamma = float(cfg.fallback_gamma)
    fb_off = gamma_offset(fb_gamma)
    gcode = KERNEL_GAMMAS[float(gamma)]
    off = gamma_offset(float(gamma))
    k_sides = 1 if stage == 1 else 2
    m_norm = (al.layout.conf_sum * k_sides) if al.n_ok else 1.0
    m_const = k_sides * off**gamma * al.layout.conf_sum if al.n_ok else 0.0
    n, a = p.n_images, int(P["core_depth"].shape[0])
    table = np.empty((n, 17))
    ad = np.empty(a)
    g_tab = np.empty((n, 17))
    g_ad = np.empty(a)
    grads = {k: np.empty_like(P[k]) for k in PARAMS}
    state = {k: (np.zeros(P[k].size), np.zeros(P[k].size)) for k in names}
    masks: dict[str, np.ndarray] = {}
    if al.intr_grad_mask is not None and not cfg.shared_intrinsics:
        m = al.intr_grad_mask.cpu().numpy().astype(np.float64)
        masks = {"log_focals": m, "pps": np.repeat(m, 2)}
    # fixed gauge: a rigid motion of a root moves its whole subtree rigidly and leaves the loss unchanged, so
    # the root's pose gradient is 0 up to rounding; Adam would turn that noise into full-size steps
    free = (consts.parent >= 0).astype(np.float64)
    masks["quats"] = np.repeat(free, 4)
    masks["trans"] = np.repeat(free, 3)
    schedule = SCHEDULES[cfg.lr_schedule]
    intr = "log_focals" in names or "pps" in names
    losses: list[float] = []
    stopped = False
    t0 = time.perf_counter()
    bar = tqdm(total=niter, desc=name, disable=not cfg.progress, leave=False)
    snap = {k: P[k].copy() for k in names}
    try:
        with LOCK:
            set_threads(al.threads)
            for it in range(niter if names else 0):
                lr = schedule(it / niter, lr_base, cfg.lr_end)
                compiled_forward(P, consts, table, ad)
                g_tab[:] = 0.0
                g_ad[:] = 0.0
                loss = 0.0
                if lay_arrs is not None:
                    tot = match.loss_and_grad_jit(
                        table, ad, *lay_arrs, stage, gcode, float(gamma), off, g_tab, g_ad, *scratch
                    )
                    loss = (tot - m_const) / m_norm
                    g_tab *= 1.0 / m_norm
                    g_ad *= 1.0 / m_norm
                if fb_w:
                    loss += fb_w * fallback.fallback_loss_and_grad(table, ad, *fb, fb_gamma, fb_off, fb_w, g_tab, g_ad)
                if not intr:
                    g_tab[:, 12:] = 0.0
                if not math.isfinite(loss):
                    stopped = True
                    break
                losses.append(loss)
                camera.camera_backward_jit(
                    *(P[k] for k in PARAMS),
                    *c_arrs,
                    g_tab,
                    g_ad,
                    *(grads[k] for k in PARAMS),
                )
                for k in names:
                    snap[k][...] = P[k]
                    g = grads[k].reshape(-1)
                    if k in masks:
                        g = g * masks[k]
                    fallback.adam_jit(P[k].reshape(-1), g, *state[k], it + 1, lr, 0.9, 0.9, 1e-8)
                q = P["quats"]
                q /= np.sqrt((q * q).sum(1, keepdims=True))
                bar.set_postfix_str(f"lr={lr:.4f} loss={loss:.4g}", refresh=False)
                bar.update(1)
    finally:
        bar.close()
    if stopped:
        for k in names:
            P[k][...] = snap[k]
        log.warning("%s: non-finite loss or parameters at iteration %d; kept the last finite state", name, len(losses))
    with torch.no_grad():
        for k, t in al._params().items():
            t.copy_(torch.from_numpy(P[k]).to(t.dtype))
    return StageResult(
        name=name, niter_done=len(losses), losses=losses, wall_s=time.perf_counter() - t0, stopped_non_finite=stopped
    )
