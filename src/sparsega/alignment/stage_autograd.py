"""Stage runner of the torch path: autograd through the camera model and the twin losses, torch's Adam. Runs on
CUDA, with known-pose constraints (hard or soft), and wherever the compiled iteration does not apply
(:meth:`.optimizer.SparseAligner.run_stage` dispatches)."""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from .losses import SCHEDULES, pose_prior
from .problem import StageResult

if TYPE_CHECKING:
    from .optimizer import SparseAligner

log = logging.getLogger(__name__)

Tensor = torch.Tensor


def run_stage_autograd(
    al: SparseAligner, stage: int, names: list[str], niter: int, lr_base: float, gamma: float, name: str
) -> StageResult:
    """One stage: ``niter`` Adam steps on the parameters ``names`` at the cosine-scheduled ``lr_base``; the last
    finite state is kept if the loss or a parameter turns non-finite."""
    cfg = al.cfg
    schedule = SCHEDULES[cfg.lr_schedule]

    params = [al._params()[k] for k in names]
    for t in params:
        t.requires_grad_(True)
    # the fused (single-kernel) Adam step is ~2.5x cheaper than foreach on these small tensors
    opt = torch.optim.Adam(params, lr=1.0, betas=(0.9, 0.9), weight_decay=0, fused=True) if params else None
    masks = _grad_masks(al, names)

    losses: list[float] = []
    stopped = False
    t0 = time.perf_counter()
    bar = tqdm(total=niter, desc=name, disable=not cfg.progress, leave=False)
    snapshot = [t.detach().clone() for t in params]
    try:
        for it in range(niter):
            if opt is None:
                break
            alpha = it / niter
            lr = schedule(alpha, lr_base, cfg.lr_end)
            for g in opt.param_groups:
                g["lr"] = lr
            opt.zero_grad(set_to_none=True)
            table, anchor_depth, cam2w = al.table_and_depths()
            if stage == 1:
                loss = al.loss_3d(table, anchor_depth, gamma)
            else:
                loss = al.loss_2d(table, anchor_depth, gamma)
            if cfg.fallback_weight:
                loss = loss + cfg.fallback_weight * al.twin.loss_fallback(table, anchor_depth, cfg.fallback_gamma)
            if al.prior is not None:
                loss = loss + pose_prior(cam2w, *al.prior)
            lval = float(loss.detach())
            if not math.isfinite(lval):
                stopped = True
                break
            losses.append(lval)
            if loss.requires_grad:
                loss.backward()
                for t, m in zip(params, masks):
                    if m is not None and t.grad is not None:
                        t.grad.mul_(m)
                for s, t in zip(snapshot, params):
                    s.copy_(t.detach())
                opt.step()
                with torch.no_grad():
                    al.quats.div_(al.quats.norm(dim=1, keepdim=True))
                if not bool(torch.isfinite(torch.cat([t.detach().view(-1) for t in params])).all()):
                    stopped = True
                    break
            bar.set_postfix_str(f"lr={lr:.4f} loss={lval:.4g}", refresh=False)
            bar.update(1)
    finally:
        bar.close()
        for t in params:
            t.requires_grad_(False)
            t.grad = None
    if stopped:
        with torch.no_grad():
            for s, t in zip(snapshot, params):
                t.copy_(s)
        log.warning("%s: non-finite loss or parameters at iteration %d; kept the last finite state", name, len(losses))
    return StageResult(
        name=name,
        niter_done=len(losses),
        losses=losses,
        wall_s=time.perf_counter() - t0,
        stopped_non_finite=stopped,
    )


def _grad_masks(al: SparseAligner, names: list[str]) -> list[Tensor | None]:
    out: list[Tensor | None] = []
    for k in names:
        m: Tensor | None = None
        if k in ("log_focals", "pps") and al.intr_grad_mask is not None and not al.cfg.shared_intrinsics:
            m = al.intr_grad_mask
        if m is not None:
            shape = al._params()[k].shape
            m = m.to(al.quats.dtype).view(-1, *([1] * (len(shape) - 1))).expand(shape)
        out.append(m)
    return out
