"""Torch-facing side of the compiled kernels: the chunked match layout they read, the camera model's constants,
and autograd wrappers (:func:`camera_table`, :func:`kernel_match_loss`) used where the iteration runs in torch
(known-pose constraints; the parity tests)."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from . import camera, match
from .common import KERNEL_GAMMAS, LOCK, gamma_offset, set_threads

Tensor = torch.Tensor


@dataclass(frozen=True)
class MatchLayout:
    """Trusted matches grouped by (image0, image1) pair and cut into chunks of ``chunk`` matches.

    Attributes:
        img: (2C,) int64 image of each chunk row (side 0 rows, then side 1 rows).
        x, y: (2C, B) pixel coordinates of each match side (0 on padding): int16 when they are integers below 2^15
            (build_problem's: half the bytes of float32 for the largest arrays of a big scene), else as given.
        off_m1: (2C, B) canonical depth ratio minus one (0 on padding).
        anchor: (2C, B) global anchor index (a valid anchor of the row's image on padding): int32 (int64 beyond
            2^31 anchors).
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

    def workspace(self) -> tuple[np.ndarray, np.ndarray]:
        """Fresh scratch arrays of the match kernel for this layout (:func:`.match.workspace`)."""
        return match.workspace(self.n_chunks, self.chunk)

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


def build_layout(
    m_img: Tensor,
    m_xy: Tensor,
    m_anchor: Tensor,
    m_off: Tensor,
    m_conf: Tensor,
    chunk: int | None = None,
    seed: int = 0,
) -> MatchLayout:
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
        """(2, K) per-side values -> (2C, B) of ``pad``'s dtype, padding slots taking the per-chunk ``pad (2, C)``."""
        out = pad.unsqueeze(-1).expand(2, n_chunks, b).reshape(2, n_chunks * b).clone()
        out[:, pos] = values[:, order_t].to(pad.dtype)
        return out.reshape(2 * n_chunks, b)

    # integer pixels (build_problem's) in int16 when they fit, any others kept as given (exact either way)
    integral = k == 0 or bool(((m_xy == m_xy.round()) & (m_xy.abs() < 2**15)).all())
    xy_dtype = torch.int16 if integral else dt
    anchor_dtype = torch.int32 if k == 0 or int(m_anchor.max()) < 2**31 - 1 else torch.int64
    first_t = torch.as_tensor(first, device=dev)
    zero = torch.zeros((2, n_chunks), device=dev, dtype=dt)
    zero_xy = torch.zeros((2, n_chunks), device=dev, dtype=xy_dtype)
    conf = torch.zeros(n_chunks * b, device=dev, dtype=m_conf.dtype)
    conf[pos] = m_conf[order_t]
    return MatchLayout(
        img=torch.as_tensor(img[:, first].reshape(-1), device=dev),
        x=fill(m_xy[..., 0], zero_xy),
        y=fill(m_xy[..., 1], zero_xy),
        off_m1=fill(m_off - 1, zero),
        anchor=fill(m_anchor, m_anchor[:, first_t].to(anchor_dtype)),
        conf=conf.reshape(n_chunks, b),
        conf_sum=float(m_conf.sum()),
        chunk=b,
    )


@dataclass(frozen=True)
class CameraConsts:
    """Fixed inputs of the compiled camera model (numpy, float64 / int64): ``median_depths, base_focals (N,)``,
    ``imsizes (N, 2)`` as (W, H), focal bounds ``fmin, fmax (N,)``, the kinematic tree as ``parent (N,)`` (-1 at
    roots) and a parents-first ``order (N,)``, and ``anchor_ptr (N+1,)``: image i's anchors are
    ``anchor_ptr[i]:anchor_ptr[i+1]`` (anchors are stored image by image)."""

    median_depths: np.ndarray
    base_focals: np.ndarray
    imsizes: np.ndarray
    fmin: np.ndarray
    fmax: np.ndarray
    parent: np.ndarray
    order: np.ndarray
    anchor_ptr: np.ndarray

    def arrays(self) -> tuple[np.ndarray, ...]:
        return (self.median_depths, self.base_focals, self.imsizes, self.fmin, self.fmax, self.parent, self.order)

    @staticmethod
    def build(
        median_depths: Tensor,
        base_focals: Tensor,
        imsizes: Tensor,
        fmin: Tensor,
        fmax: Tensor,
        anchor_img: Tensor,
        levels: list[np.ndarray],
        parent_pos: list[np.ndarray],
    ) -> CameraConsts:
        """The constants of a problem (per-image tensors as in ``AlignProblem``; ``anchor_img`` non-decreasing, the
        anchors stored image by image) and its kinematic tree given by depth level (``losses.tree_levels``)."""
        n = int(median_depths.shape[0])
        parent = np.full(n, -1, dtype=np.int64)
        for lvl in range(1, len(levels)):
            parent[levels[lvl]] = levels[lvl - 1][parent_pos[lvl]]
        img = anchor_img.cpu().numpy()
        if np.any(img[1:] < img[:-1]):
            raise ValueError("AlignProblem anchors must be stored image by image (anchor_img non-decreasing)")

        def f64(t: Tensor) -> np.ndarray:
            return t.detach().cpu().to(torch.float64).contiguous().numpy()

        return CameraConsts(
            median_depths=f64(median_depths),
            base_focals=f64(base_focals),
            imsizes=f64(imsizes),
            fmin=f64(fmin),
            fmax=f64(fmax),
            parent=parent,
            order=np.concatenate(levels).astype(np.int64),
            anchor_ptr=np.searchsorted(img, np.arange(n + 1)).astype(np.int64),
        )


def _np64(t: Tensor) -> np.ndarray:
    return t.detach().to(torch.float64).contiguous().numpy()


class _CameraTable(torch.autograd.Function):
    """Parameters -> ``(17, N)`` camera table and ``(A,)`` anchor depths by the compiled camera model."""

    @staticmethod
    def forward(
        ctx,
        quats: Tensor,
        trans: Tensor,
        log_sizes: Tensor,
        log_focals: Tensor,  # type: ignore[override]
        pps: Tensor,
        core: Tensor,
        consts: CameraConsts,
    ) -> tuple[Tensor, Tensor]:
        params = tuple(_np64(t) for t in (quats, trans, log_sizes, log_focals, pps, core))
        n = params[0].shape[0]
        table = np.empty((n, 17))
        ad = np.empty(params[5].shape[0])
        camera.camera_forward_jit(*params, *consts.arrays(), consts.anchor_ptr, table, ad)
        ctx.params, ctx.consts, ctx.dtype = params, consts, quats.dtype
        return torch.from_numpy(table).T.to(quats.dtype), torch.from_numpy(ad).to(quats.dtype)

    @staticmethod
    def backward(ctx, g_table: Tensor | None, g_ad: Tensor | None):  # type: ignore[override]
        params, consts = ctx.params, ctx.consts
        n, a = params[0].shape[0], params[5].shape[0]
        gt = np.zeros((n, 17)) if g_table is None else g_table.detach().T.to(torch.float64).contiguous().numpy()
        ga = np.zeros(a) if g_ad is None else _np64(g_ad)
        outs = tuple(np.empty_like(p) for p in params)
        camera.camera_backward_jit(*params, *consts.arrays(), consts.anchor_ptr, gt, ga, *outs)
        ctx.params = None
        grads = [torch.from_numpy(o).to(ctx.dtype) if need else None for o, need in zip(outs, ctx.needs_input_grad[:6])]
        return (*grads, None)


def camera_table(
    quats: Tensor, trans: Tensor, log_sizes: Tensor, log_focals: Tensor, pps: Tensor, core: Tensor, consts: CameraConsts
) -> tuple[Tensor, Tensor]:
    """The camera table ``(17, N)`` and anchor depths ``(A,)`` of
    :meth:`sparsega.alignment.optimizer.SparseAligner.cameras` (without known-pose constraints), differentiable,
    computed by the compiled camera model (CPU only)."""
    return _CameraTable.apply(quats, trans, log_sizes, log_focals, pps, core, consts)


class _KernelMatchLoss(torch.autograd.Function):
    """Autograd wrapper: the forward runs the kernel (loss and gradients together), the backward scales them."""

    @staticmethod
    def forward(
        ctx,
        table: Tensor,
        anchor_depth: Tensor,
        lay,
        stage: int,
        gamma: float,  # type: ignore[override]
        intr_grad: bool,
        threads: int,
    ) -> Tensor:
        tab = table.detach().T.to(torch.float64).contiguous().numpy()
        ad = anchor_depth.detach().to(torch.float64).contiguous().numpy()
        g_tab = np.zeros_like(tab)
        g_ad = np.zeros_like(ad)
        arrs = lay.arrays
        gamma = float(gamma)
        off = gamma_offset(gamma)
        with LOCK:
            set_threads(threads)
            total = match.loss_and_grad_jit(
                tab, ad, *arrs, stage, KERNEL_GAMMAS[gamma], gamma, off, g_tab, g_ad, *lay.workspace()
            )
        k = 1 if stage == 1 else 2
        norm = lay.conf_sum * k
        total -= k * off**gamma * lay.conf_sum  # the constant rho(0) of every match, as the fused loss does
        if not intr_grad:
            g_tab[:, 12:] = 0.0
        ctx.grads = (torch.from_numpy(g_tab).T.to(table.dtype) / norm, torch.from_numpy(g_ad).to(table.dtype) / norm)
        return table.new_tensor(total / norm)

    @staticmethod
    def backward(ctx, gout: Tensor):  # type: ignore[override]
        g_tab, g_ad = ctx.grads
        ctx.grads = None
        return g_tab * gout, g_ad * gout, None, None, None, None, None


def kernel_match_loss(
    table: Tensor, anchor_depth: Tensor, layout, stage: int, gamma: float, intr_grad: bool = True, threads: int = 1
) -> Tensor:
    """The stage-1 (3D) or stage-2 (reprojection) loss of the matches in ``layout``, normalised by the sum of their
    confidences (stage 2: twice that), from the ``(17, N)`` camera table and ``(A,)`` anchor depths; differentiable
    (the kernel computes the gradients in its forward). CPU tensors only. ``intr_grad=False`` drops the gradients of
    the intrinsics rows."""
    if table.device.type != "cpu":
        raise ValueError("the compiled match-loss kernel runs on CPU tensors only")
    if float(gamma) not in KERNEL_GAMMAS:
        raise ValueError(f"the compiled kernel supports gamma in {sorted(KERNEL_GAMMAS)}, not {gamma}")
    if layout.n_chunks == 0:
        return table.new_zeros(())
    return _KernelMatchLoss.apply(table, anchor_depth, layout, stage, gamma, intr_grad, threads)
