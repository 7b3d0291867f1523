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
from typing import Callable, Sequence

import numpy as np
import torch
from scipy.spatial.transform import Rotation
from tqdm.auto import tqdm

from . import _kernels
from ._kernels import PIX_MAX, PIX_MIN, SQ_MIN, Z_MIN, MatchLayout, build_layout, gamma_offset, kernel_match_loss
from ..errors import ConfigError
from ..types import AlignConfig

log = logging.getLogger(__name__)

Tensor = torch.Tensor


# ----------------------------------------------------------------------------------------------------------------
# losses and schedules (pure)
# ----------------------------------------------------------------------------------------------------------------
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


def gamma_of_distance(gamma: float) -> Callable[[Tensor], Tensor]:
    """The gamma loss as a function of a precomputed distance ``r >= 0`` (any shape)."""
    if gamma == 1:
        return lambda r: r
    off = gamma_offset(gamma)
    return lambda r: (r + off) ** gamma - off**gamma


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
    uv = cam[..., :2] / cam[..., 2:3].clamp(min=Z_MIN)
    return (uv * focal.unsqueeze(-1) + pp).clamp(PIX_MIN, PIX_MAX)


def tree_levels(n: int, root: int | Sequence[int], edges: np.ndarray
                ) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """Group the nodes of a tree (or a forest with several roots) by depth.

    Returns ``(nodes_per_level, parent_pos_per_level, inverse)`` where ``parent_pos_per_level[l][k]`` is the
    position of node ``nodes_per_level[l][k]``'s parent inside level ``l-1`` and ``inverse`` maps node index ->
    position in the concatenation of all levels. ``edges (E, 2)`` are (parent, child), parents listed first.
    """
    roots = sorted({int(root)} if np.isscalar(root) else {int(r) for r in root})
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
    if n and sorted(levels[0].tolist()) != roots:
        raise ValueError("kinematic tree is not a spanning forest of the given roots")
    inverse = np.empty(n, dtype=np.int64)
    inverse[np.concatenate(levels)] = np.arange(n)
    return levels, parent_pos, inverse


def compose_chain(rel: Tensor, levels: Sequence[np.ndarray | Tensor], parent_pos: Sequence[np.ndarray | Tensor],
                  inverse: np.ndarray | Tensor) -> Tensor:
    """Absolute poses from relative ones along the tree: ``abs[child] = abs[parent] @ rel[child]``.

    ``rel (N, 4, 4)`` -> ``(N, 4, 4)``, one batched matmul per tree depth level. The index arrays may be given as
    tensors on ``rel``'s device (no per-call conversion).
    """
    dev = rel.device

    def idx(x: np.ndarray | Tensor) -> Tensor:
        return torch.as_tensor(x, device=dev)

    out = [rel.index_select(0, idx(levels[0]))]
    for nodes, ppos in zip(levels[1:], parent_pos[1:]):
        out.append(out[-1].index_select(0, idx(ppos)) @ rel.index_select(0, idx(nodes)))
    return torch.cat(out).index_select(0, idx(inverse))


class _Gather(torch.autograd.Function):
    """``index_select(table, dim, idx)`` with a backward that is one ``index_add_`` (torch's generic
    index_select backward goes through a several times slower scatter on CPU)."""

    @staticmethod
    def forward(ctx, table: Tensor, dim: int, idx: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(idx)
        ctx.shape, ctx.dim = table.shape, dim
        return torch.index_select(table, dim, idx)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        (idx,) = ctx.saved_tensors
        return grad.new_zeros(ctx.shape).index_add_(ctx.dim, idx, grad.contiguous()), None, None


def gather(table: Tensor, dim: int, idx: Tensor) -> Tensor:
    """``torch.index_select(table, dim, idx)`` with a fast backward (see :class:`_Gather`)."""
    return _Gather.apply(table, dim, idx)


def distance(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    """Euclidean distance between points given as coordinate tuples (each (L,)) -> (L,).

    Written out (not ``norm`` over a tiny axis, which is ~50x slower on CPU); the square is clamped at 1e-30 so
    the gradient stays finite at exactly zero distance (the value changes by at most 1e-15).
    """
    sq = sum((u - v) * (u - v) for u, v in zip(a, b))
    return sq.clamp_min(SQ_MIN).sqrt()  # type: ignore[union-attr]


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
            m_ok: (M,) True where the pair's matching is trusted (max confidence > threshold); trusted matches
            come first (the losses use the leading slice).
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
    init_R: Tensor | None = None
    init_C: Tensor | None = None
    init_log_sizes: Tensor | None = None

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


def resolve_backend(config: AlignConfig) -> str:
    """The match-loss implementation for ``config.loss_backend`` on ``config.device``: ``"auto"`` is the compiled
    kernel on CPU when numba imports and the loss gammas have a compiled form, the autograd path otherwise (CUDA)."""
    want = config.loss_backend
    on_cpu = torch.device(config.device).type == "cpu"
    gammas_ok = all(float(g) in _kernels.KERNEL_GAMMAS for g in (config.loss_gamma1, config.loss_gamma2))
    if want == "auto":
        return "kernel" if on_cpu and gammas_ok and _kernels.available() else "autograd"
    if want == "kernel":
        if not _kernels.available():
            raise ConfigError("loss_backend='kernel' needs numba, which does not import here (pip install numba); "
                              "use loss_backend='autograd'")
        if not gammas_ok:
            raise ConfigError(f"loss_backend='kernel' supports loss gammas {sorted(_kernels.KERNEL_GAMMAS)} only; "
                              "use loss_backend='autograd' for others")
    return want


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
        self._tree_key: tuple | None = None
        self._tree_t: tuple[list[Tensor], list[Tensor], Tensor] | None = None
        ok = problem.m_ok.cpu().numpy()
        self.n_ok = int(ok.sum())
        if not ok[: self.n_ok].all():
            raise ValueError("AlignProblem matches must be sorted with trusted (m_ok) matches first")
        k = self.n_ok
        # flat (2K,) arrays of the trusted matches: side 0 then side 1. The matches are put in a fixed
        # pseudo-random order: index_add_ (the gathers' backward) is ~5x slower on CPU when its indices are sorted,
        # as they are when matches come grouped by pair. Only the summation order changes.
        perm = torch.randperm(k, generator=torch.Generator().manual_seed(0)).to(problem.m_img.device)
        self._img = problem.m_img[:, perm].reshape(-1).contiguous()
        self._anchor = problem.m_anchor[:, perm].reshape(-1).contiguous()
        self._off_m1 = (problem.m_off[:, perm] - 1).reshape(-1).contiguous()
        self._x = problem.m_xy[:, perm, 0].reshape(-1).contiguous()
        self._y = problem.m_xy[:, perm, 1].reshape(-1).contiguous()
        self._conf = problem.m_conf[perm].contiguous()
        self._fb_target = tuple(problem.fb_target[:, c].contiguous() for c in range(3))
        self.backend = resolve_backend(config)
        self._consts: tuple | None = None
        self._layout: MatchLayout | None = None
        self._np: dict[str, np.ndarray] | None = None  # float64 parameters of the compiled path

        self._imsizes = problem.imsizes.to(dt)
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

        # chained pairwise poses (pose_init="procrustes"); the reference starts from identity
        self.warm_start = config.pose_init == "procrustes" and problem.init_R is not None
        if self.warm_start:
            self.log_sizes.copy_(problem.init_log_sizes)
            self.set_absolute_poses(problem.init_R, problem.init_C * (1 / self.log_sizes.exp().min()))

        # known cameras (see sparsega.alignment.known): intrinsics gradient mask (1 = free), fixed poses, pose priors
        self.intr_grad_mask: Tensor | None = None
        self.fixed_mask: Tensor | None = None
        self.fixed_R: Tensor | None = None
        self.fixed_C: Tensor | None = None
        self.prior: tuple[Tensor, Tensor, Tensor, float, float] | None = None

    @torch.no_grad()
    def set_absolute_poses(self, R: Tensor, C: Tensor) -> None:
        """Initialise every camera at rotation ``R (N,3,3)`` and centre ``C (N,3)`` by inverting the kinematic
        chain: with the current sizes, focals and principal points, camera i's absolute chain pose is
        ``(R_i, T_i = C_i / g + R_i o_i)`` and its parameters are ``rel_i = chain(parent)^-1 chain(i)``."""
        p = self.p
        n = p.n_images
        focals, pps_n = self.focals(), self.pps.expand(n, 2)
        sizes = self.log_sizes.exp()
        g = 1 / sizes.min()
        off = self._focal_plane_offset(sizes * p.median_depths * focals / p.base_focals, focals, pps_n)
        chain = torch.eye(4, dtype=R.dtype, device=R.device).repeat(n, 1, 1)
        chain[:, :3, :3] = R
        chain[:, :3, 3] = C / g + (R @ off.unsqueeze(-1)).squeeze(-1)
        rel = chain.clone()
        nodes = np.concatenate(self.levels[1:]) if len(self.levels) > 1 else np.zeros(0, np.int64)
        if len(nodes):
            parents = np.concatenate([lvl[pp] for lvl, pp in zip(self.levels[:-1], self.parent_pos[1:])])
            idx = torch.as_tensor(nodes, device=R.device)
            rel[idx] = torch.linalg.inv(chain[torch.as_tensor(parents, device=R.device)]) @ chain[idx]
        # scipy's xyzw quaternions (roma's convention), from float64 rotations
        quats = Rotation.from_matrix(rel[:, :3, :3].detach().cpu().double().numpy()).as_quat()
        self.quats[:] = torch.from_numpy(quats).to(self.quats)
        self.trans[:] = rel[:, :3, 3]

    def install_known_poses(self, R: Tensor, C: Tensor, mask: Tensor, hard: bool, weight: float) -> None:
        """Constrain cameras ``mask (N,)`` to rotations ``R (N,3,3)`` and centres ``C (N,3)`` (internal units).

        ``hard``: known cameras become roots of the kinematic forest and their chain pose is derived from (R, C)
        every iteration, so they never move. Otherwise a prior ``weight * (angle^2 + |dC|^2 / L^2)`` is added to
        the loss (L = spread of the known centres). Call :meth:`set_absolute_poses` afterwards to initialise.
        """
        p = self.p
        known = mask.cpu().numpy()
        if hard:
            edges = p.edges[~known[p.edges[:, 1]]] if len(p.edges) else p.edges
            roots = sorted({p.root} | set(np.flatnonzero(known).tolist()))
            self.levels, self.parent_pos, self.inverse = tree_levels(p.n_images, roots, edges)
            # rows of free cameras are never used: make them finite so that torch.where's gradients stay clean
            eye = torch.eye(3, dtype=R.dtype, device=R.device).expand_as(R)
            self.fixed_mask = mask
            self.fixed_R = torch.where(mask.view(-1, 1, 1), R, eye)
            self.fixed_C = torch.where(mask.view(-1, 1), C, torch.zeros_like(C))
            return
        spread = float((C[mask] - C[mask].mean(0)).norm(dim=1).max()) if int(mask.sum()) > 1 else 1.0
        self.prior = (mask, R, C, weight, max(spread, 1e-9))

    def _focal_plane_offset(self, z_cams: Tensor, focals: Tensor, pps_n: Tensor) -> Tensor:
        """(N, 3) vector from the camera centre to its focal-plane point, in camera axes."""
        ones = torch.ones_like(z_cams).unsqueeze(1)
        return z_cams.unsqueeze(1) * torch.cat(
            (self._imsizes.to(focals.dtype) / focals.unsqueeze(1) * (0.5 - pps_n), ones), dim=1)

    def prior_loss(self, cam2w: Tensor) -> Tensor:
        """Soft pose prior (0 when none is installed)."""
        if self.prior is None:
            return cam2w.new_zeros(())
        mask, R, C, w, spread = self.prior
        import roma  # imported here: roma pulls in torch._dynamo (~0.7 s), not needed by the compiled path

        rot_err = roma.rotmat_geodesic_distance(cam2w[mask, :3, :3], R[mask])
        tr_err = (cam2w[mask, :3, 3] - C[mask]).norm(dim=1) / spread
        return w * (rot_err.square().mean() + tr_err.square().mean())

    # -- model -----------------------------------------------------------------------------------------------
    def focals(self) -> Tensor:
        f = self.log_focals.exp().expand(self.p.n_images)
        return torch.minimum(torch.maximum(f, self.min_focals), self.max_focals)

    def principal_points(self) -> Tensor:
        return self.pps.expand(self.p.n_images, 2) * self._imsizes.to(self.pps.dtype)

    def _tree_tensors(self) -> tuple[list[Tensor], list[Tensor], Tensor]:
        """The kinematic tree's index arrays as tensors on the device (cached; rebuilt if the tree changes)."""
        key = (id(self.levels), id(self.parent_pos), id(self.inverse))
        if self._tree_t is None or self._tree_key != key:
            dev = self.quats.device
            self._tree_t = ([torch.as_tensor(x, device=dev) for x in self.levels],
                            [torch.as_tensor(x, device=dev) for x in self.parent_pos],
                            torch.as_tensor(self.inverse, device=dev))
            self._tree_key = key
        return self._tree_t

    def cameras(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Returns ``focals (N,), pps (N,2) pixels, cam2w (N,4,4), anchor_depth (A,), z_cams (N,)``."""
        p = self.p
        focals = self.focals()
        pps_n = self.pps.expand(p.n_images, 2)
        sizes = self.log_sizes.exp()
        gscale = 1 / sizes.min()
        z_cams = sizes * p.median_depths * focals / p.base_focals

        n = p.n_images
        import roma

        rot_rel = roma.unitquat_to_rotmat(self.quats / self.quats.norm(dim=1, keepdim=True).clamp_min(1e-12))
        trans_offset = self._focal_plane_offset(z_cams, focals, pps_n)
        trans_rel = self.trans
        if self.fixed_mask is not None:  # known cameras are roots whose chain pose derives from (R, C)
            m = self.fixed_mask.view(n, 1)
            fixed_t = self.fixed_C / gscale + (self.fixed_R @ trans_offset.unsqueeze(-1)).squeeze(-1)
            rot_rel = torch.where(m.view(n, 1, 1), self.fixed_R, rot_rel)
            trans_rel = torch.where(m, fixed_t, trans_rel)
        bottom = torch.zeros((1, 1, 4), device=focals.device, dtype=focals.dtype)
        bottom[..., 3] = 1
        rel = torch.cat((torch.cat((rot_rel, trans_rel.unsqueeze(-1)), 2), bottom.expand(n, 1, 4)), 1)
        chain = compose_chain(rel, *self._tree_tensors())
        rot = chain[:, :3, :3]
        new_t = gscale * (chain[:, :3, 3] - (rot @ trans_offset.unsqueeze(-1)).squeeze(-1))
        cam2w = torch.cat((torch.cat((rot, new_t.unsqueeze(-1)), 2), bottom.expand(n, 1, 4)), 1)

        # d = g (z_i + (c - 1) m_i s_i) = (g s_i m_i) (f_i / f0_i + c - 1): two per-image factors gathered per anchor
        fa = gather(gscale * sizes * p.median_depths, 0, p.anchor_img)
        fb = gather(focals / p.base_focals - 1, 0, p.anchor_img)
        anchor_depth = fa * (fb + self.core_depth)
        return focals, pps_n * self._imsizes.to(focals.dtype), cam2w, anchor_depth, z_cams

    def table_and_depths(self) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(17, N)`` camera table, ``(A,)`` anchor depths and ``cam2w (N, 4, 4)`` for the loss. With the compiled
        kernel and no known-pose constraint, the compiled camera model computes the first two (its backward is
        analytic) and cam2w is None (only the pose prior needs it)."""
        if self.backend == "kernel" and self.fixed_mask is None and self.prior is None:
            return (*_kernels.camera_table(self.quats, self.trans, self.log_sizes, self.log_focals, self.pps,
                                           self.core_depth, self._camera_consts()), None)
        focals, pps, cam2w, anchor_depth, _ = self.cameras()
        return self.camera_table(focals, pps, cam2w), anchor_depth, cam2w

    def _camera_consts(self) -> _kernels.CameraConsts:
        key = (id(self.levels), id(self.parent_pos))
        if self._consts is None or self._consts[0] != key:
            p, n = self.p, self.p.n_images
            parent = np.full(n, -1, dtype=np.int64)
            for lvl in range(1, len(self.levels)):
                parent[self.levels[lvl]] = self.levels[lvl - 1][self.parent_pos[lvl]]
            order = np.concatenate(self.levels).astype(np.int64)

            def f64(t: Tensor) -> np.ndarray:
                return t.detach().cpu().to(torch.float64).contiguous().numpy()

            self._consts = (key, _kernels.CameraConsts(
                median_depths=f64(p.median_depths), base_focals=f64(p.base_focals), imsizes=f64(self._imsizes),
                fmin=f64(self.min_focals), fmax=f64(self.max_focals), parent=parent, order=order,
                anchor_img=p.anchor_img.cpu().numpy().astype(np.int64)))
        return self._consts[1]

    # Hot path, in structure-of-arrays layout: per-image quantities are packed as the ROWS of one (17, N) table
    # [R (9, row-major), t (3), f, ppx, ppy, f0 / f, 1] gathered once per point with a single index_select along
    # columns, then unbound into 17 contiguous (L,) rows. Everything after is elementwise on contiguous rows (no
    # per-point 3x3 matmuls, no reductions over tiny axes, no zero-filled slice gradients).
    def camera_table(self, focals: Tensor, pps: Tensor, cam2w: Tensor) -> Tensor:
        """(17, N) packed camera parameters (see above)."""
        n = focals.shape[0]
        return torch.cat((cam2w[:, :3, :3].reshape(n, 9).T, cam2w[:, :3, 3].T, focals[None], pps.T,
                          (self.p.base_focals / focals)[None], torch.ones_like(focals)[None]), dim=0)

    @staticmethod
    def _gather(table: Tensor, idx: Tensor) -> tuple[Tensor, ...]:
        """The 17 table rows at images ``idx (L,)``: a tuple of contiguous (L,) tensors."""
        # one 1-D gather per row: unbinding a single (17, L) gather costs a large stack in the backward pass
        return tuple(gather(row, 0, idx) for row in table.unbind(0))

    @staticmethod
    def _to_world(r: tuple[Tensor, ...], x: Tensor, y: Tensor, d: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """World coordinates of pixels ``(x, y)`` at depth ``d`` (all (L,)) for gathered cameras ``r``."""
        cx = (x - r[13]) / r[12] * d
        cy = (y - r[14]) / r[12] * d
        return (r[0] * cx + r[1] * cy + r[2] * d + r[9],
                r[3] * cx + r[4] * cy + r[5] * d + r[10],
                r[6] * cx + r[7] * cy + r[8] * d + r[11])

    @staticmethod
    def _to_pixels(r: tuple[Tensor, ...], wx: Tensor, wy: Tensor, wz: Tensor) -> tuple[Tensor, Tensor]:
        """Pixels of world points in gathered cameras (reference clipping: depth >= 1e-3, pixels in
        [-1000, 2000] so that points behind a camera never produce NaNs)."""
        dx, dy, dz = wx - r[9], wy - r[10], wz - r[11]
        z = (r[2] * dx + r[5] * dy + r[8] * dz).clamp(min=Z_MIN)
        fz = r[12] / z
        u = ((r[0] * dx + r[3] * dy + r[6] * dz) * fz + r[13]).clamp(PIX_MIN, PIX_MAX)
        v = ((r[1] * dx + r[4] * dy + r[7] * dz) * fz + r[14]).clamp(PIX_MIN, PIX_MAX)
        return u, v

    def match_points(self, table: Tensor, anchor_depth: Tensor) -> tuple[tuple[Tensor, Tensor, Tensor], tuple]:
        """World coordinates (3 x (2K,)) of both sides of the K trusted matches (side 0 then side 1), and the
        gathered cameras."""
        r = self._gather(table, self._img)
        d = gather(anchor_depth, 0, self._anchor) * (1 + self._off_m1 * r[15])
        return self._to_world(r, self._x, self._y, d), r

    def anchor_points(self, table: Tensor, anchor_depth: Tensor, idx: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """World coordinates of anchors ``idx (L,)`` (anchors have canonical offset 1)."""
        r = self._gather(table, self.p.anchor_img[idx])
        xy = self.p.anchor_xy[idx]
        return self._to_world(r, xy[:, 0].contiguous(), xy[:, 1].contiguous(), anchor_depth[idx])

    # -- losses ----------------------------------------------------------------------------------------------
    @property
    def layout(self) -> MatchLayout:
        """Chunked layout of the trusted matches for the compiled kernel (built on first use)."""
        if self._layout is None:
            p, k = self.p, self.n_ok
            self._layout = build_layout(p.m_img[:, :k], p.m_xy[:, :k], p.m_anchor[:, :k], p.m_off[:, :k],
                                        p.m_conf[:k])
        return self._layout

    def _intr_grad(self) -> bool:
        return bool(self.log_focals.requires_grad or self.pps.requires_grad)

    def _match_loss(self, table: Tensor, anchor_depth: Tensor, stage: int, gamma: float) -> Tensor:
        return kernel_match_loss(table, anchor_depth, self.layout, stage, gamma, self._intr_grad(), self.cfg.threads)

    def loss_3d(self, table: Tensor, anchor_depth: Tensor, gamma: float) -> Tensor:
        """Confidence-weighted robust (gamma) distance between the two 3D points of each trusted match."""
        if self.n_ok == 0:
            return table.new_zeros(())
        if self.backend != "autograd":
            return self._match_loss(table, anchor_depth, 1, gamma)
        pts, _ = self.match_points(table, anchor_depth)
        return self.loss_3d_naive(pts, gamma_of_distance(gamma))

    def loss_2d(self, table: Tensor, anchor_depth: Tensor, gamma: float) -> Tensor:
        """Confidence-weighted robust (gamma) reprojection error of each side's point into the other image, both
        ways."""
        if self.n_ok == 0:
            return table.new_zeros(())
        if self.backend != "autograd":
            return self._match_loss(table, anchor_depth, 2, gamma)
        pts, cam = self.match_points(table, anchor_depth)
        return self.loss_2d_naive(pts, cam, gamma_of_distance(gamma))

    def loss_3d_naive(self, pts: tuple[Tensor, Tensor, Tensor], loss: Callable[[Tensor], Tensor]) -> Tensor:
        """Autograd twin of the fused stage-1 loss, from :meth:`match_points`' world points."""
        k = self.n_ok
        if k == 0:
            return pts[0].new_zeros(())
        r = distance(tuple(c[:k] for c in pts), tuple(c[k:] for c in pts))
        return (self._conf * loss(r)).sum() / self._conf.sum()

    def loss_2d_naive(self, pts: tuple[Tensor, Tensor, Tensor], cam: tuple[Tensor, ...],
                      loss: Callable[[Tensor], Tensor]) -> Tensor:
        """Autograd twin of the fused stage-2 loss, from :meth:`match_points`' world points and cameras."""
        k = self.n_ok
        if k == 0:
            return pts[0].new_zeros(())
        total = pts[0].new_zeros(())
        for side, sl_self, sl_other in ((0, slice(0, k), slice(k, None)), (1, slice(k, None), slice(0, k))):
            u, v = self._to_pixels(tuple(c[sl_self] for c in cam), *(c[sl_other] for c in pts))
            r = distance((self._x[sl_self], self._y[sl_self]), (u, v))
            total = total + (self._conf * loss(r)).sum()
        return total / (2 * self._conf.sum())

    def loss_fallback(self, table: Tensor, anchor_depth: Tensor, loss: Callable[[Tensor], Tensor]) -> Tensor:
        """Regression of anchors onto the other view's pointmap prediction (pairs with untrusted matches)."""
        p = self.p
        if p.fb_conf.numel() == 0:
            return table.new_zeros(())
        pts = self.anchor_points(table, anchor_depth, p.fb_anchor)
        r = self._gather(table, p.fb_ref)
        tx, ty, tz = self._fb_target
        tgt = (r[0] * tx + r[1] * ty + r[2] * tz + r[9],
               r[3] * tx + r[4] * ty + r[5] * tz + r[10],
               r[6] * tx + r[7] * ty + r[8] * tz + r[11])
        return (p.fb_conf * loss(distance(pts, tgt))).sum() / p.fb_conf.sum()

    # -- optimisation ----------------------------------------------------------------------------------------
    def _params(self) -> dict[str, Tensor]:
        return {"quats": self.quats, "trans": self.trans, "log_sizes": self.log_sizes,
                "log_focals": self.log_focals, "pps": self.pps, "core_depth": self.core_depth}

    def _compiled_ok(self) -> bool:
        """Whether the whole iteration can run in the compiled kernels (CPU, no known-pose constraint)."""
        return self.backend == "kernel" and self.fixed_mask is None and self.prior is None

    def _fallback_blocks(self) -> tuple[np.ndarray, ...]:
        """The fallback targets as float64/int64 numpy arrays, cut into blocks of constant (image, reference)."""
        p = self.p
        anc = p.fb_anchor.cpu().numpy().astype(np.int64)
        ref = p.fb_ref.cpu().numpy().astype(np.int64)
        img = p.anchor_img.cpu().numpy()[anc].astype(np.int64)
        f = len(anc)
        if f:
            change = np.flatnonzero((img[1:] != img[:-1]) | (ref[1:] != ref[:-1])) + 1
            starts = np.r_[0, change, f].astype(np.int64)
        else:
            starts = np.zeros(1, np.int64)
        xy = p.anchor_xy.cpu().double().numpy()[anc]
        return (starts, img[starts[:-1]], ref[starts[:-1]], np.ascontiguousarray(xy[:, 0]),
                np.ascontiguousarray(xy[:, 1]), anc, np.ascontiguousarray(p.fb_target.cpu().double().numpy()),
                np.ascontiguousarray(p.fb_conf.cpu().double().numpy()))

    def _compiled_forward(self, table: np.ndarray, ad: np.ndarray) -> None:
        """Fill ``table (N, 17)`` and ``ad (A,)`` from the float64 parameters by the compiled camera model."""
        P, consts = self._np, self._camera_consts()
        _kernels._camera_forward_jit(P["quats"], P["trans"], P["log_sizes"], P["log_focals"], P["pps"],
                                     P["core_depth"], *consts.arrays(), consts.anchor_img, table, ad)

    def _run_stage_compiled(self, stage: int, names: list[str], niter: int, lr_base: float, gamma: float,
                            name: str) -> StageResult:
        """One stage with every iteration in compiled code: camera model, match and fallback losses with their
        gradients, the camera model's reverse pass and Adam, all float64 on numpy arrays (no autograd graph)."""
        cfg, p = self.cfg, self.p
        kn = _kernels
        if self._np is None:
            self._np = {k: t.detach().cpu().to(torch.float64).numpy().copy() for k, t in self._params().items()}
        P = self._np
        consts = self._camera_consts()
        c_arrs = (*consts.arrays(), consts.anchor_img)
        lay_arrs = self.layout.arrays if self.n_ok else None
        fb = self._fallback_blocks()
        fb_sum = float(fb[-1].sum())
        fb_w = cfg.fallback_weight / fb_sum if (cfg.fallback_weight and fb_sum > 0) else 0.0
        fb_gamma = float(cfg.fallback_gamma)
        fb_off = gamma_offset(fb_gamma)
        gcode = _kernels.KERNEL_GAMMAS[float(gamma)]
        off = gamma_offset(float(gamma))
        k_sides = 1 if stage == 1 else 2
        m_norm = (self.layout.conf_sum * k_sides) if self.n_ok else 1.0
        m_const = k_sides * off**gamma * self.layout.conf_sum if self.n_ok else 0.0
        n, a = p.n_images, int(P["core_depth"].shape[0])
        table = np.empty((n, 17))
        ad = np.empty(a)
        g_tab = np.empty((n, 17))
        g_ad = np.empty(a)
        order = ("quats", "trans", "log_sizes", "log_focals", "pps", "core_depth")
        grads = {k: np.empty_like(P[k]) for k in order}
        state = {k: (np.zeros(P[k].size), np.zeros(P[k].size)) for k in names}
        masks: dict[str, np.ndarray] = {}
        if self.intr_grad_mask is not None and not cfg.shared_intrinsics:
            m = self.intr_grad_mask.cpu().numpy().astype(np.float64)
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
            with kn.LOCK:
                kn.set_threads(cfg.threads)
                for it in range(niter if names else 0):
                    lr = schedule(it / niter, lr_base, cfg.lr_end)
                    self._compiled_forward(table, ad)
                    g_tab[:] = 0.0
                    g_ad[:] = 0.0
                    loss = 0.0
                    if lay_arrs is not None:
                        tot = kn._loss_and_grad_jit(table, ad, *lay_arrs, stage, gcode, float(gamma), off, g_tab,
                                                    g_ad)
                        loss = (tot - m_const) / m_norm
                        g_tab *= 1.0 / m_norm
                        g_ad *= 1.0 / m_norm
                    if fb_w:
                        loss += fb_w * kn._fallback_jit(table, ad, *fb, fb_gamma, fb_off, fb_w, g_tab, g_ad)
                    if not intr:
                        g_tab[:, 12:] = 0.0
                    if not math.isfinite(loss):
                        stopped = True
                        break
                    losses.append(loss)
                    kn._camera_backward_jit(P["quats"], P["trans"], P["log_sizes"], P["log_focals"], P["pps"],
                                            P["core_depth"], *c_arrs, g_tab, g_ad, *(grads[k] for k in order))
                    for k in names:
                        snap[k][...] = P[k]
                        g = grads[k].reshape(-1)
                        if k in masks:
                            g = g * masks[k]
                        kn._adam_jit(P[k].reshape(-1), g, *state[k], it + 1, lr, 0.9, 0.9, 1e-8)
                    q = P["quats"]
                    q /= np.sqrt((q * q).sum(1, keepdims=True))
                    bar.set_postfix_str(f"lr={lr:.4f} loss={loss:.4g}", refresh=False)
                    bar.update(1)
        finally:
            bar.close()
        if stopped:
            for k in names:
                P[k][...] = snap[k]
            log.warning("%s: non-finite loss or parameters at iteration %d; kept the last finite state",
                        name, len(losses))
        with torch.no_grad():
            for k, t in self._params().items():
                t.copy_(torch.from_numpy(P[k]).to(t.dtype))
        return StageResult(name=name, niter_done=len(losses), losses=losses,
                           wall_s=time.perf_counter() - t0, stopped_non_finite=stopped)

    def run_stage(self, stage: int) -> StageResult:
        """Run stage 1 (3D matching; poses + scales) or 2 (2D reprojection; + intrinsics, depths)."""
        cfg, p = self.cfg, self.p
        if stage == 1:
            names, niter = ["quats", "trans", "log_sizes"], cfg.niter1
            lr_base = (cfg.lr1_procrustes or cfg.lr1) if self.warm_start else cfg.lr1
            gamma, name = cfg.loss_gamma1, "stage 1 (3D)"
        else:
            names = ["quats", "trans", "log_sizes", "log_focals"]
            if cfg.opt_pp:
                names.append("pps")
            if cfg.opt_depth:
                names.append("core_depth")
            niter, lr_base = cfg.niter2, cfg.lr2
            gamma, name = cfg.loss_gamma2, "stage 2 (2D)"
        if self.intr_grad_mask is not None and not bool(self.intr_grad_mask.any()):
            names = [k for k in names if k not in ("log_focals", "pps")]
        if self.fixed_mask is not None and bool(self.fixed_mask.all()):
            names = [k for k in names if k not in ("quats", "trans")]
        if self._compiled_ok():
            return self._run_stage_compiled(stage, names, niter, lr_base, gamma, name)
        fb_loss = gamma_of_distance(cfg.fallback_gamma)
        schedule = SCHEDULES[cfg.lr_schedule]

        params = [self._params()[k] for k in names]
        for t in params:
            t.requires_grad_(True)
        # the fused (single-kernel) Adam step is ~2.5x cheaper than foreach on these small tensors
        opt = (torch.optim.Adam(params, lr=1.0, betas=(0.9, 0.9), weight_decay=0, fused=True)
               if params else None)
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
                table, anchor_depth, cam2w = self.table_and_depths()
                if stage == 1:
                    loss = self.loss_3d(table, anchor_depth, gamma)
                else:
                    loss = self.loss_2d(table, anchor_depth, gamma)
                if cfg.fallback_weight:
                    loss = loss + cfg.fallback_weight * self.loss_fallback(table, anchor_depth, fb_loss)
                if self.prior is not None:
                    loss = loss + self.prior_loss(cam2w)
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
                        self.quats.div_(self.quats.norm(dim=1, keepdim=True))
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
            log.warning("%s: non-finite loss or parameters at iteration %d; kept the last finite state",
                        name, len(losses))
        return StageResult(name=name, niter_done=len(losses), losses=losses,
                           wall_s=time.perf_counter() - t0, stopped_non_finite=stopped)

    def _grad_masks(self, names: list[str]) -> list[Tensor | None]:
        out: list[Tensor | None] = []
        for k in names:
            m: Tensor | None = None
            if k in ("log_focals", "pps") and self.intr_grad_mask is not None and not self.cfg.shared_intrinsics:
                m = self.intr_grad_mask
            if m is not None:
                shape = self._params()[k].shape
                m = m.to(self.quats.dtype).view(-1, *([1] * (len(shape) - 1))).expand(shape)
            out.append(m)
        return out

    @torch.no_grad()
    def state(self, stages: list[StageResult]) -> OptimState:
        n = self.p.n_images
        if self._np is not None:  # the compiled path: its own float64 camera model on its float64 parameters
            table = np.empty((n, 17))
            ad = np.empty(self._np["core_depth"].shape[0])
            with _kernels.LOCK:
                self._compiled_forward(table, ad)
            c2w = np.tile(np.eye(4), (n, 1, 1))
            c2w[:, :3, :3] = table[:, :9].reshape(n, 3, 3)
            c2w[:, :3, 3] = table[:, 9:12]
            dev, dt = self.quats.device, self.quats.dtype
            focals = torch.from_numpy(table[:, 12].copy()).to(dev, dt)
            pps = torch.from_numpy(table[:, 13:15].copy()).to(dev, dt)
            cam2w = torch.from_numpy(c2w).to(dev, dt)
            anchor_depth = torch.from_numpy(ad).to(dev, dt)
        else:
            focals, pps, cam2w, anchor_depth, _ = self.cameras()
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
