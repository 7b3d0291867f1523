"""The two-stage sparse scene optimiser, vectorised over all images and all matches.

Parameterisation (faithful to MASt3R sparse GA):

- per image ``i``: a unit quaternion ``q_i`` and a translation ``t_i`` giving the pose RELATIVE TO ITS PARENT in the
  kinematic tree (root: relative to the world), a log scale ``s_i``, a log focal ``log f_i``, a principal point
  ``pp_i`` normalised by the image size, and anchor depths ``c_i`` (one per anchor, normalised by the image's
  median canonical depth ``m_i``, initialised to the canonical depths);
- camera ``i``'s distance to its "focal plane" is ``z_i = exp(s_i) m_i f_i / f0_i`` (``f0_i`` the initial focal),
  anchor depths are additive around it, ``d = g (z_i + (c - 1) m_i exp(s_i))`` with ``g = 1 / min_k exp(s_k)``
  (the reference's guard against the optimiser crushing the scale), and the chained pose's translation is moved
  back along the optical axis so that ``t`` places the focal-plane point rather than the camera centre;
- a pixel ``x`` tied to anchor ``a`` by the canonical ratio ``o`` has depth ``d_a (1 + (o - 1) f0 / f)``.

Stage 1 optimises poses and scales with a robust 3D loss between the two back-projected points of every match;
stage 2 adds focals, principal points and anchor depths with a robust 2D reprojection loss. Pairs whose best
match confidence is ``<= matching_conf_thr`` use instead a small-weight regression of each image's anchors onto
the other image's pointmap prediction ("DUSt3R fallback").

Every iteration is a handful of gathers over flat index arrays (images, anchors, matches) and a few reductions:
there is no Python loop over pairs or images, only over the depth levels of the kinematic tree.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import roma
import torch
from tqdm.auto import tqdm

from .types import AlignConfig

log = logging.getLogger(__name__)

Tensor = torch.Tensor


# ----------------------------------------------------------------------------------------------------------------
# losses and schedules (pure)
# ----------------------------------------------------------------------------------------------------------------
def gamma_offset(gamma: float) -> float:
    """Offset ``o = (1/gamma)^(1/(gamma-1))`` making the gamma loss's slope 1 at 0 (gamma != 1)."""
    return (1.0 / gamma) ** (1.0 / (gamma - 1.0))


def gamma_loss(gamma: float) -> Callable[[Tensor, Tensor], Tensor]:
    """Robust loss on the Euclidean distance ``r = |a - b|`` over the last axis: ``(r + o)^gamma - o^gamma``.

    ``gamma = 1`` is plain ``r``. Shapes: ``(..., D), (..., D) -> (...)``.
    """
    if gamma == 1:
        return lambda a, b: (a - b).norm(dim=-1)
    off = gamma_offset(gamma)

    def loss(a: Tensor, b: Tensor) -> Tensor:
        return ((a - b).norm(dim=-1) + off) ** gamma - off**gamma

    return loss


def cosine_schedule(alpha: float, base: float, end: float) -> float:
    """Cosine decay from ``base`` (alpha=0) to ``end`` (alpha=1)."""
    return end + (base - end) * (1 + math.cos(alpha * math.pi)) / 2


def linear_schedule(alpha: float, base: float, end: float) -> float:
    """Linear decay from ``base`` (alpha=0) to ``end`` (alpha=1)."""
    return (1 - alpha) * base + alpha * end


SCHEDULES = {"cosine": cosine_schedule, "linear": linear_schedule}


# ----------------------------------------------------------------------------------------------------------------
# geometry (pure, batch-agnostic)
# ----------------------------------------------------------------------------------------------------------------
def backproject(xy: Tensor, depth: Tensor, focal: Tensor, pp: Tensor) -> Tensor:
    """Camera-frame points of pixels. ``xy (..., 2)``, ``depth (...)``, ``focal (...)``, ``pp (..., 2)`` ->
    ``(..., 3)``; pinhole with square pixels, pixel centres at integer coordinates."""
    uv = (xy - pp) / focal.unsqueeze(-1)
    return torch.cat((uv * depth.unsqueeze(-1), depth.unsqueeze(-1)), dim=-1)


def transform(rot: Tensor, trans: Tensor, pts: Tensor) -> Tensor:
    """Apply ``x -> R x + t`` with ``rot (..., 3, 3)``, ``trans (..., 3)``, ``pts (..., 3)``."""
    return (rot @ pts.unsqueeze(-1)).squeeze(-1) + trans


def project(rot_w2c: Tensor, trans_w2c: Tensor, focal: Tensor, pp: Tensor, pts: Tensor) -> Tensor:
    """Pixel coordinates of world points, as the reference: depth clipped at 1e-3, pixels clipped to
    [-1000, 2000] so that points behind the camera cannot produce NaNs. ``pts (..., 3) -> (..., 2)``."""
    cam = transform(rot_w2c, trans_w2c, pts)
    uv = cam[..., :2] / cam[..., 2:3].clamp(min=1e-3)
    return (uv * focal.unsqueeze(-1) + pp).clamp(-1000, 2000)


def tree_levels(n: int, root: int, edges: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """Group tree nodes by depth. Returns ``(nodes_per_level, parent_pos_per_level, inverse)`` where
    ``parent_pos_per_level[l][k]`` is the position of node ``nodes_per_level[l][k]``'s parent inside level ``l-1``
    and ``inverse`` maps node index -> position in the concatenation of all levels."""
    parent = np.full(n, -1, dtype=np.int64)
    depth = np.zeros(n, dtype=np.int64)
    for p, c in edges:  # BFS order: parents come first
        parent[c] = p
        depth[c] = depth[p] + 1
    levels: list[np.ndarray] = []
    parent_pos: list[np.ndarray] = []
    pos = np.zeros(n, dtype=np.int64)
    for lvl in range(int(depth.max()) + 1 if n else 0):
        nodes = np.flatnonzero(depth == lvl)
        pos[nodes] = np.arange(len(nodes))
        levels.append(nodes)
        parent_pos.append(pos[parent[nodes]] if lvl else np.zeros(0, dtype=np.int64))
    if n and (len(levels[0]) != 1 or levels[0][0] != root):
        raise ValueError("kinematic tree is not a spanning tree rooted at its root")
    inverse = np.empty(n, dtype=np.int64)
    inverse[np.concatenate(levels)] = np.arange(n)
    return levels, parent_pos, inverse


def compose_chain(rel: Tensor, levels: list[np.ndarray], parent_pos: list[np.ndarray], inverse: np.ndarray) -> Tensor:
    """Absolute poses from relative ones along the tree: ``abs[child] = abs[parent] @ rel[child]``.

    ``rel (N, 4, 4)`` -> ``(N, 4, 4)``, one batched matmul per tree depth level.
    """
    dev = rel.device
    out = [rel[torch.as_tensor(levels[0], device=dev)]]
    for nodes, ppos in zip(levels[1:], parent_pos[1:]):
        out.append(out[-1][torch.as_tensor(ppos, device=dev)] @ rel[torch.as_tensor(nodes, device=dev)])
    return torch.cat(out)[torch.as_tensor(inverse, device=dev)]


# ----------------------------------------------------------------------------------------------------------------
# the problem: everything the optimiser needs, at anchor resolution
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class AlignProblem:
    """Flat, vectorised description of an alignment problem (all torch tensors on the target device).

    N images, A anchors in total, M matches (each with two sides), F fallback targets.

    Attributes:
        imsizes: (N, 2) (W, H) of each image.
        base_focals: (N,) initial focals f0 from the canonical views (pixels).
        pps: (N, 2) initial principal points (pixels).
        median_depths: (N,) median canonical anchor depth of each image.
        core_depth: (A,) canonical anchor depths divided by their image's median depth.
        anchor_img: (A,) image of each anchor.  anchor_xy: (A, 2) anchor pixel (x, y).
        m_img: (2, M) images of both sides of each match.  m_xy: (2, M, 2) pixels.  m_anchor: (2, M) global anchor
            index.  m_off: (2, M) canonical depth ratio to the anchor.  m_conf: (M,) confidence.
            m_ok: (M,) True where the pair's matching is trusted (max confidence > threshold).
        fb_anchor: (F,) anchors regressed by the fallback.  fb_ref: (F,) image whose camera frame the target is in.
            fb_target: (F, 3) target point in that frame.  fb_conf: (F,) weight.
        root, edges: kinematic tree (edges (N-1, 2) (parent, child) in BFS order).
    """

    imsizes: Tensor
    base_focals: Tensor
    pps: Tensor
    median_depths: Tensor
    core_depth: Tensor
    anchor_img: Tensor
    anchor_xy: Tensor
    m_img: Tensor
    m_xy: Tensor
    m_anchor: Tensor
    m_off: Tensor
    m_conf: Tensor
    m_ok: Tensor
    fb_anchor: Tensor
    fb_ref: Tensor
    fb_target: Tensor
    fb_conf: Tensor
    root: int
    edges: np.ndarray
    mean_confs: Tensor = field(default_factory=lambda: torch.zeros(0))

    @property
    def n_images(self) -> int:
        return int(self.imsizes.shape[0])

    @property
    def n_matches(self) -> int:
        return int(self.m_conf.shape[0])


@dataclass
class StageResult:
    """Outcome of one optimisation stage."""

    name: str
    niter_done: int
    losses: list[float]
    wall_s: float
    stopped_non_finite: bool = False


@dataclass
class OptimState:
    """Final optimised quantities (detached, on the optimiser's device).

    intrinsics (N, 3, 3); cam2w (N, 4, 4); anchor_depth (A,) absolute anchor depths; focals (N,).
    """

    intrinsics: Tensor
    cam2w: Tensor
    anchor_depth: Tensor
    focals: Tensor
    stages: list[StageResult]


class SparseAligner:
    """Holds the parameters of a sparse scene alignment and runs the two stages.

    State is real here: the parameters and the optimiser; everything else is pure functions.
    """

    def __init__(self, problem: AlignProblem, config: AlignConfig) -> None:
        self.p = problem
        self.cfg = config
        dev, dt = problem.core_depth.device, problem.core_depth.dtype
        n = problem.n_images
        self.levels, self.parent_pos, self.inverse = tree_levels(n, problem.root, problem.edges)

        diags = problem.imsizes.to(dt).norm(dim=1)
        self.min_focals, self.max_focals = 0.25 * diags, 10 * diags

        self.quats = torch.zeros((n, 4), device=dev, dtype=dt)
        self.quats[:, 3] = 1
        self.trans = torch.zeros((n, 3), device=dev, dtype=dt)
        self.log_sizes = torch.zeros(n, device=dev, dtype=dt)
        self.core_depth = problem.core_depth.clone()
        pps_norm = problem.pps / problem.imsizes.to(dt)
        if config.shared_intrinsics:
            w = problem.mean_confs.to(dt) if problem.mean_confs.numel() == n else torch.ones(n, device=dev, dtype=dt)
            w = w / w.sum()
            self.pps = (w @ pps_norm).view(1, 2).clone()
            self.log_focals = (w @ problem.base_focals).log().view(1).clone()
        else:
            self.pps = pps_norm.clone()
            self.log_focals = problem.base_focals.log().clone()

        # gradient masks for known cameras (1 = free); set by the known-cameras layer
        self.pose_grad_mask: Tensor | None = None
        self.intr_grad_mask: Tensor | None = None

    # -- model -----------------------------------------------------------------------------------------------
    def focals(self) -> Tensor:
        f = self.log_focals.exp().expand(self.p.n_images)
        return torch.minimum(torch.maximum(f, self.min_focals), self.max_focals)

    def principal_points(self) -> Tensor:
        return self.pps.expand(self.p.n_images, 2) * self.p.imsizes.to(self.pps.dtype)

    def cameras(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Returns ``focals (N,), pps (N,2) pixels, cam2w (N,4,4), anchor_depth (A,), z_cams (N,)``."""
        p = self.p
        focals = self.focals()
        pps_n = self.pps.expand(p.n_images, 2)
        sizes = self.log_sizes.exp()
        gscale = 1 / sizes.min()
        z_cams = sizes * p.median_depths * focals / p.base_focals

        n = p.n_images
        rel = torch.zeros((n, 4, 4), device=focals.device, dtype=focals.dtype)
        rel[:, :3, :3] = roma.unitquat_to_rotmat(torch.nn.functional.normalize(self.quats, dim=1))
        rel[:, :3, 3] = self.trans
        rel[:, 3, 3] = 1
        chain = compose_chain(rel, self.levels, self.parent_pos, self.inverse)
        rot = chain[:, :3, :3]
        ones = torch.ones_like(z_cams).unsqueeze(1)
        trans_offset = z_cams.unsqueeze(1) * torch.cat(
            (p.imsizes.to(focals.dtype) / focals.unsqueeze(1) * (0.5 - pps_n), ones), dim=1
        )
        new_t = gscale * (chain[:, :3, 3] - (rot @ trans_offset.unsqueeze(-1)).squeeze(-1))
        cam2w = torch.zeros_like(chain)
        cam2w[:, :3, :3] = rot
        cam2w[:, :3, 3] = new_t
        cam2w[:, 3, 3] = 1

        img = p.anchor_img
        anchor_depth = gscale * (z_cams[img] + (self.core_depth - 1) * (p.median_depths[img] * sizes[img]))
        return focals, pps_n * p.imsizes.to(focals.dtype), cam2w, anchor_depth, z_cams

    def match_points(self, focals: Tensor, pps: Tensor, cam2w: Tensor, anchor_depth: Tensor) -> Tensor:
        """World points of both sides of every match: ``(2, M, 3)``."""
        p = self.p
        img = p.m_img
        f = focals[img]
        off = 1 + (p.m_off - 1) * (p.base_focals[img] / f)
        depth = anchor_depth[p.m_anchor] * off
        cam = backproject(p.m_xy, depth, f, pps[img])
        return transform(cam2w[img, :3, :3], cam2w[img, :3, 3], cam)

    def anchor_points(self, focals: Tensor, pps: Tensor, cam2w: Tensor, anchor_depth: Tensor, idx: Tensor) -> Tensor:
        """World points of anchors ``idx (K,)`` -> ``(K, 3)``."""
        img = self.p.anchor_img[idx]
        cam = backproject(self.p.anchor_xy[idx], anchor_depth[idx], focals[img], pps[img])
        return transform(cam2w[img, :3, :3], cam2w[img, :3, 3], cam)

    # -- losses ----------------------------------------------------------------------------------------------
    def loss_3d(self, pts: Tensor, ok: Tensor, conf: Tensor, pix_loss: Callable) -> Tensor:
        if not bool(ok.any()):
            return pts.new_zeros(())
        c = conf[ok]
        return (c * pix_loss(pts[0, ok], pts[1, ok])).sum() / c.sum()

    def loss_2d(self, pts: Tensor, focals: Tensor, pps: Tensor, cam2w: Tensor, ok: Tensor, conf: Tensor,
                pix_loss: Callable) -> Tensor:
        if not bool(ok.any()):
            return pts.new_zeros(())
        p = self.p
        rot_w2c = cam2w[:, :3, :3].transpose(1, 2)
        t_w2c = -(rot_w2c @ cam2w[:, :3, 3:4]).squeeze(-1)
        img = p.m_img[:, ok]  # (2, K)
        other = pts[:, ok].flip(0)  # side s is reprojected the point of the other side
        uv = project(rot_w2c[img], t_w2c[img], focals[img], pps[img], other)
        c = conf[ok]
        err = pix_loss(p.m_xy[:, ok], uv)  # (2, K)
        return (c * err).sum() / (2 * c.sum())

    def loss_fallback(self, focals: Tensor, pps: Tensor, cam2w: Tensor, anchor_depth: Tensor,
                      pix_loss: Callable) -> Tensor:
        p = self.p
        if p.fb_conf.numel() == 0:
            return focals.new_zeros(())
        pts = self.anchor_points(focals, pps, cam2w, anchor_depth, p.fb_anchor)
        ref = p.fb_ref
        tgt = transform(cam2w[ref, :3, :3], cam2w[ref, :3, 3], p.fb_target)
        return (p.fb_conf * pix_loss(pts, tgt)).sum() / p.fb_conf.sum()

    # -- optimisation ----------------------------------------------------------------------------------------
    def _params(self) -> dict[str, Tensor]:
        return {"quats": self.quats, "trans": self.trans, "log_sizes": self.log_sizes,
                "log_focals": self.log_focals, "pps": self.pps, "core_depth": self.core_depth}

    def run_stage(self, stage: int) -> StageResult:
        """Run stage 1 (3D matching; poses + scales) or 2 (2D reprojection; + intrinsics, depths)."""
        cfg, p = self.cfg, self.p
        if stage == 1:
            names, niter, lr_base = ["quats", "trans", "log_sizes"], cfg.niter1, cfg.lr1
            pix_loss, name = gamma_loss(cfg.loss_gamma1), "stage 1 (3D)"
        else:
            names = ["quats", "trans", "log_sizes", "log_focals"]
            if cfg.opt_pp:
                names.append("pps")
            if cfg.opt_depth:
                names.append("core_depth")
            niter, lr_base = cfg.niter2, cfg.lr2
            pix_loss, name = gamma_loss(cfg.loss_gamma2), "stage 2 (2D)"
        if self.intr_grad_mask is not None and not bool(self.intr_grad_mask.any()):
            names = [k for k in names if k not in ("log_focals", "pps")]
        if self.pose_grad_mask is not None and not bool(self.pose_grad_mask.any()) and stage == 1:
            names = [k for k in names if k not in ("quats", "trans", "log_sizes")]
        fb_loss = gamma_loss(cfg.fallback_gamma)
        schedule = SCHEDULES[cfg.lr_schedule]
        ok, conf = p.m_ok, p.m_conf

        params = [self._params()[k] for k in names]
        for t in params:
            t.requires_grad_(True)
        opt = torch.optim.Adam(params, lr=1.0, betas=(0.9, 0.9), weight_decay=0) if params else None
        masks = self._grad_masks(names)

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
                focals, pps, cam2w, anchor_depth, _ = self.cameras()
                pts = self.match_points(focals, pps, cam2w, anchor_depth)
                if stage == 1:
                    loss = self.loss_3d(pts, ok, conf, pix_loss)
                else:
                    loss = self.loss_2d(pts, focals, pps, cam2w, ok, conf, pix_loss)
                if cfg.fallback_weight:
                    loss = loss + cfg.fallback_weight * self.loss_fallback(focals, pps, cam2w, anchor_depth, fb_loss)
                lval = float(loss)
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
                        self.quats.div_(self.quats.norm(dim=1, keepdim=True))
                    if not all(bool(torch.isfinite(t).all()) for t in params):
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
            log.warning("%s: non-finite loss or parameters at iteration %d; kept the last finite state",
                        name, len(losses))
        return StageResult(name=name, niter_done=len(losses), losses=losses,
                           wall_s=time.perf_counter() - t0, stopped_non_finite=stopped)

    def _grad_masks(self, names: list[str]) -> list[Tensor | None]:
        out: list[Tensor | None] = []
        for k in names:
            m: Tensor | None = None
            if k in ("quats", "trans", "log_sizes") and self.pose_grad_mask is not None:
                m = self.pose_grad_mask
            elif k in ("log_focals", "pps") and self.intr_grad_mask is not None and not self.cfg.shared_intrinsics:
                m = self.intr_grad_mask
            if m is not None:
                shape = self._params()[k].shape
                m = m.to(self.quats.dtype).view(-1, *([1] * (len(shape) - 1))).expand(shape)
            out.append(m)
        return out

    @torch.no_grad()
    def state(self, stages: list[StageResult]) -> OptimState:
        focals, pps, cam2w, anchor_depth, _ = self.cameras()
        n = self.p.n_images
        K = torch.zeros((n, 3, 3), device=focals.device, dtype=focals.dtype)
        K[:, 0, 0] = K[:, 1, 1] = focals
        K[:, :2, 2] = pps
        K[:, 2, 2] = 1
        return OptimState(intrinsics=K, cam2w=cam2w, anchor_depth=anchor_depth, focals=focals, stages=stages)


def optimize(problem: AlignProblem, config: AlignConfig, setup: Callable[[SparseAligner], None] | None = None
             ) -> OptimState:
    """Run both stages on ``problem`` and return the final cameras and anchor depths.

    ``setup`` may adjust the aligner before optimising (known cameras: initial values and gradient masks).
    """
    aligner = SparseAligner(problem, config)
    if setup is not None:
        setup(aligner)
    stages = [aligner.run_stage(1)]
    if config.niter2 and not stages[0].stopped_non_finite:
        stages.append(aligner.run_stage(2))
    return aligner.state(stages)
