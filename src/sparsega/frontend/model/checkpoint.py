"""Read official MASt3R / DUSt3R checkpoints safely and build the matching network.

A checkpoint is a ``torch.save`` dict with ``'model'`` (state dict) and ``'args'`` (an ``argparse.Namespace``
whose ``.model`` is a constructor call string such as ``AsymmetricMASt3R(enc_depth=24, ...)``). The file is read
with ``torch.load(weights_only=True)`` (only ``argparse.Namespace`` allow-listed, so a pickle that would run code
is refused) and the constructor string is parsed with :mod:`ast`, never evaluated.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import logging
import math
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ...errors import CheckpointError, ConfigError
from .net import DUST3R_CLASS, MASTER_CLASS, MASt3RNet, NetConfig

log = logging.getLogger(__name__)

_INF_NAMES = {"inf": math.inf}
_PATCH_EMBED_ALIASES = {"PatchEmbedDust3R": "PatchEmbedDust3R", "ManyAR_PatchEmbed": "PatchEmbedDust3R"}

# Constructor arguments accepted (with their defaults) per class; anything else is an error.
_CROCO_DEFAULTS: dict[str, Any] = {
    "img_size": 224,
    "patch_size": 16,
    "mask_ratio": 0.9,
    "enc_embed_dim": 768,
    "enc_depth": 12,
    "enc_num_heads": 12,
    "dec_embed_dim": 512,
    "dec_depth": 8,
    "dec_num_heads": 16,
    "mlp_ratio": 4,
    "norm_im2_in_dec": True,
    "pos_embed": "cosine",
}
_DUST3R_DEFAULTS: dict[str, Any] = {
    **_CROCO_DEFAULTS,
    "output_mode": "pts3d",
    "head_type": "linear",
    "depth_mode": ("exp", -math.inf, math.inf),
    "conf_mode": ("exp", 1, math.inf),
    "freeze": "none",
    "landscape_only": True,
    "patch_embed_cls": "PatchEmbedDust3R",
}
_MAST3R_DEFAULTS: dict[str, Any] = {
    **_DUST3R_DEFAULTS,
    "desc_mode": "norm",
    "two_confs": False,
    "desc_conf_mode": None,
}
CLASS_DEFAULTS: dict[str, dict[str, Any]] = {DUST3R_CLASS: _DUST3R_DEFAULTS, MASTER_CLASS: _MAST3R_DEFAULTS}


# ---------------------------------------------------------------------------------------------- parsing


def _literal(node: ast.AST, text: str) -> Any:
    """Value of a literal AST node: numbers, strings, bools, None, tuples/lists, bare ``inf`` and ``-x``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool, type(None))):
        return node.value
    if isinstance(node, ast.Name) and node.id in _INF_NAMES:
        return _INF_NAMES[node.id]
    if isinstance(node, (ast.Tuple, ast.List)):
        return tuple(_literal(elt, text) for elt in node.elts)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _literal(node.operand, text)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise CheckpointError(f"unsupported value {ast.get_source_segment(text, node)!r} in constructor string")
        return -value if isinstance(node.op, ast.USub) else value
    raise CheckpointError(f"unsupported value {ast.get_source_segment(text, node)!r} in constructor string")


def parse_constructor(text: str) -> tuple[str, dict[str, Any]]:
    """Parse ``'Cls(a=1, b=(2, -inf), c=('norm'))'`` -> ``('Cls', {'a': 1, 'b': (2, -inf), 'c': 'norm'})``.

    Keyword arguments only; values must be literals (bare ``inf`` allowed). Nothing is evaluated.
    Raises CheckpointError for anything else.
    """
    if not isinstance(text, str):
        raise CheckpointError(f"constructor is not a string but {type(text).__name__}")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise CheckpointError(f"cannot parse constructor string {text[:80]!r}: {exc.msg}") from None
    call = tree.body
    if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name):
        raise CheckpointError(f"constructor string is not a plain call: {text[:80]!r}")
    if call.args:
        raise CheckpointError(f"constructor string has positional arguments: {text[:80]!r}")
    kwargs: dict[str, Any] = {}
    for kw in call.keywords:
        if kw.arg is None:
            raise CheckpointError(f"constructor string uses **kwargs: {text[:80]!r}")
        if kw.arg in kwargs:
            raise CheckpointError(f"constructor string repeats argument {kw.arg!r}")
        kwargs[kw.arg] = _literal(kw.value, text.strip())
    return call.func.id, kwargs


def _mode(value: Any, name: str, allowed: tuple[str, ...]) -> tuple[str, float, float]:
    if not (isinstance(value, tuple) and len(value) == 3 and isinstance(value[0], str)):
        raise CheckpointError(f"{name} must be a (mode, vmin, vmax) tuple, got {value!r}")
    if value[0] not in allowed:
        raise CheckpointError(f"unsupported {name} {value[0]!r} (expected one of {', '.join(allowed)})")
    return value[0], float(value[1]), float(value[2])


def _pos_int(kwargs: Mapping[str, Any], name: str) -> int:
    value = kwargs[name]
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise CheckpointError(f"{name} must be a positive integer, got {value!r}")
    return value


def config_from_constructor(text: str) -> tuple[NetConfig, dict[str, Any]]:
    """Constructor string -> (validated NetConfig, effective kwargs) following the reference loader rules.

    ``ManyAR_PatchEmbed`` becomes ``PatchEmbedDust3R``; ``landscape_only`` is forced False; absent arguments
    take the class defaults; absent ``desc_conf_mode`` falls back to ``conf_mode``.
    """
    cls, given = parse_constructor(text)
    if cls not in CLASS_DEFAULTS:
        raise CheckpointError(f"unknown model class {cls!r} (expected {MASTER_CLASS} or {DUST3R_CLASS})")
    defaults = CLASS_DEFAULTS[cls]
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise CheckpointError(f"unknown {cls} argument(s): {', '.join(unknown[:5])}")
    kw = {**defaults, **given}
    kw["landscape_only"] = False
    pe = kw["patch_embed_cls"]
    if pe not in _PATCH_EMBED_ALIASES:
        raise CheckpointError(f"unsupported patch_embed_cls {pe!r}")
    kw["patch_embed_cls"] = _PATCH_EMBED_ALIASES[pe]

    pos_embed = kw["pos_embed"]
    match = re.fullmatch(r"RoPE(\d+(?:\.\d*)?)", str(pos_embed))
    if not match:
        raise CheckpointError(f"unsupported pos_embed {pos_embed!r} (only RoPE<freq> is implemented)")

    img_size = kw["img_size"]
    img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    if len(img_size) != 2 or not all(isinstance(v, int) and v > 0 for v in img_size):
        raise CheckpointError(f"img_size must be an int or an (H, W) tuple, got {kw['img_size']!r}")
    ints = {n: _pos_int(kw, n) for n in ("patch_size", "enc_embed_dim", "enc_depth", "enc_num_heads",
                                         "dec_embed_dim", "dec_depth", "dec_num_heads")}  # fmt: skip
    for dim, heads in (("enc_embed_dim", "enc_num_heads"), ("dec_embed_dim", "dec_num_heads")):
        if ints[dim] % ints[heads] or (ints[dim] // ints[heads]) % 4:
            raise CheckpointError(f"{dim}={ints[dim]} does not split into {ints[heads]} heads of a multiple of 4")

    head_type, output_mode = kw["head_type"], kw["output_mode"]
    desc = re.fullmatch(r"pts3d\+desc(\d+)", str(output_mode))
    if output_mode != "pts3d" and desc is None:
        raise CheckpointError(f"unsupported output_mode {output_mode!r}")
    if desc is not None and cls != MASTER_CLASS:
        raise CheckpointError(f"output_mode {output_mode!r} needs {MASTER_CLASS}, not {cls}")
    supported = {"linear": output_mode == "pts3d", "dpt": output_mode == "pts3d", "catmlp+dpt": desc is not None}
    if not supported.get(head_type, False):
        raise CheckpointError(f"unsupported head_type {head_type!r} with output_mode {output_mode!r}")

    depth_mode = _mode(kw["depth_mode"], "depth_mode", ("exp", "square", "linear"))
    if depth_mode[1:] != (-math.inf, math.inf):
        raise CheckpointError(f"bounded depth_mode {kw['depth_mode']!r} is not supported")
    conf_mode = None if kw["conf_mode"] is None else _mode(kw["conf_mode"], "conf_mode", ("exp", "sigmoid"))
    desc_mode = kw.get("desc_mode", "norm")
    two_confs = bool(kw.get("two_confs", False))
    dcm_raw = kw.get("desc_conf_mode")
    desc_conf_mode = conf_mode if dcm_raw is None else _mode(dcm_raw, "desc_conf_mode", ("exp", "sigmoid"))
    if desc is not None:
        if desc_mode != "norm":
            raise CheckpointError(f"unsupported desc_mode {desc_mode!r}")
        if two_confs and desc_conf_mode is None:
            raise CheckpointError("two_confs=True needs a desc_conf_mode or a conf_mode")
    mlp_ratio = kw["mlp_ratio"]
    if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)) or mlp_ratio <= 0:
        raise CheckpointError(f"mlp_ratio must be a positive number, got {mlp_ratio!r}")

    config = NetConfig(
        model_class=cls,
        img_size=img_size,  # type: ignore[arg-type]
        mlp_ratio=float(mlp_ratio),
        norm_im2_in_dec=bool(kw["norm_im2_in_dec"]),
        rope_base=float(match.group(1)),
        head_type=head_type,
        output_mode=output_mode,
        depth_mode=depth_mode,
        conf_mode=conf_mode,
        desc_mode=desc_mode,
        two_confs=two_confs,
        desc_conf_mode=desc_conf_mode,
        **ints,
    )
    return config, kw


def build_net(text: str, device: torch.device | str | None = None) -> MASt3RNet:
    """Build an (untrained) network from a constructor string; ``device="meta"`` gives a weightless skeleton."""
    config, kw = config_from_constructor(text)
    with torch.device(device if device is not None else "cpu"):
        net = MASt3RNet(config, kw)
    return net


# ---------------------------------------------------------------------------------------------- loading


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    return f"{type(exc).__name__}: {first[:200]}"


def _file_digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _alias_pairs(keys: list[str]) -> dict[str, str]:
    """``...scratch.layer_rn.K.weight`` <-> ``...scratch.layer{K+1}_rn.weight`` for the expected keys."""
    pairs: dict[str, str] = {}
    for k in keys:
        m = re.fullmatch(r"(.*scratch\.)layer_rn\.(\d)\.(weight|bias)", k)
        if m:
            other = f"{m.group(1)}layer{int(m.group(2)) + 1}_rn.{m.group(3)}"
            pairs[k], pairs[other] = other, k
    return pairs


def _complete_state_dict(state: dict[str, torch.Tensor], expected: list[str]) -> dict[str, torch.Tensor]:
    """Fill keys the reference loader fills: ``dec_blocks2`` from ``dec_blocks``, DPT scratch aliases."""
    state = dict(state)
    if not any(k.startswith("dec_blocks2.") for k in state):
        for k in list(state):
            if k.startswith("dec_blocks."):
                state["dec_blocks2." + k[len("dec_blocks.") :]] = state[k].clone()
    for k, other in _alias_pairs(expected).items():
        if k not in state and other in state:
            state[k] = state[other]
    return state


def _few(names: list[str], n: int = 3) -> str:
    more = f" (+{len(names) - n} more)" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def load_state_dict_strict(net: MASt3RNet, state: Mapping[str, Any], source: str) -> None:
    """Load ``state`` into ``net`` (possibly built on the meta device) with strict key/shape checks.

    Raises CheckpointError naming ``source`` and a few missing/unexpected/mis-shaped keys.
    """
    expected = net.state_dict()
    names = list(expected)
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CheckpointError(f"{source}: 'model' is not a mapping of names to tensors")
    full = _complete_state_dict(dict(state), names)
    missing = [k for k in names if k not in full]
    unexpected = [k for k in full if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_few(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_few(unexpected)}")
        raise CheckpointError(f"{source}: state dict does not match the architecture; " + "; ".join(parts))
    bad = [f"{k} {tuple(full[k].shape)} != {tuple(v.shape)}" for k, v in expected.items() if full[k].shape != v.shape]
    if bad:
        raise CheckpointError(f"{source}: {len(bad)} tensor(s) with a wrong shape: {_few(bad, 2)}")
    nonfloat = [k for k in names if not full[k].is_floating_point()]
    if nonfloat:
        raise CheckpointError(f"{source}: non-floating-point weights: {_few(nonfloat)}")
    dtype = next(iter(expected.values())).dtype
    full = {k: full[k].to(dtype) for k in names}
    net.load_state_dict(full, strict=True, assign=True)


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """Read ``(state_dict, constructor string)`` from an official checkpoint file, safely (no code runs)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file, not a checkpoint")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path}: not a torch checkpoint archive, or one holding objects other than tensors "
            "and plain values (refused: loading it could run code)"
        ) from None
    except Exception as exc:  # noqa: BLE001 - any failure to unpickle means "not a usable checkpoint"
        raise CheckpointError(f"{path}: not a readable checkpoint ({_one_line(exc)})") from None
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(f"{path}: top level is a {type(ckpt).__name__}, expected a dict with 'model' and 'args'")
    if "model" not in ckpt or "args" not in ckpt:
        missing = [k for k in ("model", "args") if k not in ckpt]
        raise CheckpointError(f"{path}: checkpoint dict lacks {', '.join(repr(k) for k in missing)}")
    args = ckpt["args"]
    text = args.get("model") if isinstance(args, Mapping) else getattr(args, "model", None)
    if not isinstance(text, str):
        raise CheckpointError(f"{path}: 'args' has no constructor string 'model'")
    state = ckpt["model"]
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: 'model' is a {type(state).__name__}, expected a state dict")
    return dict(state), text


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> MASt3RNet:
    """Load an official MASt3R/DUSt3R checkpoint -> network in eval mode on ``device``, weights frozen.

    Raises CheckpointError (one line, naming the file) for anything that is not a usable checkpoint.
    """
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"invalid device {device!r}: {_one_line(exc)}") from None
    path = Path(path)
    state, text = read_checkpoint(path)
    try:
        config, kw = config_from_constructor(text)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    with torch.device("meta"):
        net = MASt3RNet(config, kw)
    load_state_dict_strict(net, state, str(path))
    net.requires_grad_(False)
    net.eval()
    net = net.to(target)
    net._identity = hashlib.blake2b(
        (config.model_class + repr(sorted(kw.items())) + _file_digest(path)).encode(), digest_size=8
    ).hexdigest()
    log.info("loaded %s (%s, %s head, identity %s)", path.name, config.model_class, config.head_type, net.identity)
    return net
