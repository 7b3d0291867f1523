"""Network front-end benchmark: seconds per pair, encoder reuse vs per-pair re-encoding, matching time.

    python benchmarks/bench_inference.py                       # ViT-L MASt3R, 10 images 512x384, swin-5, all pairs
    python benchmarks/bench_inference.py --pairs 3             # quick: time the first 3 pairs of the graph only
    python benchmarks/bench_inference.py --n-images 4 --json   # JSON on stdout
    python benchmarks/bench_inference.py --tiny --pairs 4      # tiny test checkpoint config (plumbing check)

The network is the official ViT-Large MASt3R configuration built from its constructor string with random weights
(timing does not depend on the weights; no checkpoint file needed). Both ways run in the same process on the same
pairs:

- ``ours``: :func:`sparsega.frontend.inference.run_pairs`: each image encoded once, both directions of a pair (and
  several
  pairs of equal shapes) per decoder call;
- ``baseline``: the reference's way: ``symmetric_inference`` per pair, which encodes both images again for every pair.

Matching (reciprocal NNs on the descriptors) is the same code for both and is reported separately. With ``--pairs K``
only the first K pairs run; the table then also extrapolates to the whole graph from the measured per-image encoder
and per-pair decoder costs (ours encodes each of the N images once, the baseline encodes 2 images per pair).
Not run by CI.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import tempfile
import time
from pathlib import Path

VITL_MAST3R = (
    "AsymmetricMASt3R(enc_depth=24, dec_depth=12, enc_embed_dim=1024, dec_embed_dim=768, enc_num_heads=16, "
    "dec_num_heads=12, pos_embed='RoPE100', patch_embed_cls='PatchEmbedDust3R', img_size=(512, 512), "
    "head_type='catmlp+dpt', output_mode='pts3d+desc24', depth_mode=('exp', -inf, inf), conf_mode=('exp', 1, inf), "
    "desc_mode=('norm'), two_confs=True, desc_conf_mode=('exp', 0, inf))"
)
TINY_MAST3R = VITL_MAST3R.replace(
    "enc_depth=24, dec_depth=12, enc_embed_dim=1024, dec_embed_dim=768, enc_num_heads=16, dec_num_heads=12",
    "enc_depth=2, dec_depth=10, enc_embed_dim=64, dec_embed_dim=48, enc_num_heads=4, dec_num_heads=3",
)


def make_photos(folder: Path, n: int, width: int, height: int, seed: int) -> list[str]:
    """n seeded smooth RGB photos (PNG) of width x height."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(width, height)
    paths = []
    for k in range(n):
        f = rng.uniform(3, 20, size=(3, 2))
        img = np.stack([127 + 100 * np.sin(f[c, 0] * xx + f[c, 1] * yy + k) for c in range(3)], axis=-1)
        path = folder / f"photo_{k:03d}.png"
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(path)
        paths.append(str(path))
    return paths


def run(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    from sparsega.frontend.images import load_images
    from sparsega.frontend.inference import run_pairs
    from sparsega.frontend.matching import extract_correspondences
    from sparsega.frontend.model import build_net
    from sparsega.frontend.pairs import make_pairs, unique_pairs

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    net = build_net(TINY_MAST3R if args.tiny else VITL_MAST3R, device=args.device).eval().requires_grad_(False)
    t_build = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        images = load_images(
            make_photos(Path(tmp), args.n_images, 2 * args.width, 2 * args.height, args.seed), size=args.width
        )
    shape = images[0].true_shape
    all_pairs = unique_pairs(make_pairs(args.n_images, args.scene_graph))
    pairs = all_pairs[: args.pairs] if args.pairs else all_pairs
    n_used = len(np.unique(pairs))

    if args.device.startswith("cuda"):  # warm-up (kernels, allocator), not timed; not needed on CPU
        run_pairs(net, images[:2], np.array([[0, 1]]), progress=False, batch_size=1, autocast=args.autocast)

    stats: dict = {}
    t0 = time.perf_counter()
    run_pairs(
        net, images, pairs, batch_size=args.batch_size, progress=not args.json, stats=stats, autocast=args.autocast
    )
    ours_total = time.perf_counter() - t0
    ours_net = stats["encode_s"] + stats["decode_s"]

    base_net, base_match = 0.0, 0.0
    if not args.no_baseline:
        for i, j in pairs.tolist():
            t0 = time.perf_counter()
            r11, r21, r22, r12 = net.symmetric_inference(images[i].tensor(args.device), images[j].tensor(args.device))
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            base_net += time.perf_counter() - t0
            t0 = time.perf_counter()
            extract_correspondences(
                [r["desc"][0] for r in (r11, r21, r22, r12)],
                [r["desc_conf"][0] for r in (r11, r21, r22, r12)],
                subsample=8,
            )
            base_match += time.perf_counter() - t0

    p = len(pairs)
    enc_per_image = stats["encode_s"] / max(stats["encoded"], 1)
    dec_per_pair = stats["decode_s"] / p
    n_all, p_all = args.n_images, len(all_pairs)
    out = {
        "model": "tiny" if args.tiny else "ViT-L MASt3R (random weights)",
        "device": args.device,
        "threads": args.threads,
        "cpu": platform.processor() or platform.machine(),
        "image_hw": list(shape),
        "scene_graph": args.scene_graph,
        "n_images": args.n_images,
        "graph_pairs": p_all,
        "pairs_timed": p,
        "images_encoded": stats["encoded"],
        "batch_size": args.batch_size,
        "build_s": round(t_build, 2),
        "ours_net_s_per_pair": round(ours_net / p, 3),
        "ours_total_s_per_pair": round(ours_total / p, 3),
        "encode_s_per_image": round(enc_per_image, 3),
        "decode_s_per_pair": round(dec_per_pair, 3),
        "matching_s_per_pair": round(stats["matching_s"] / p, 3),
    }
    # whole-graph projection from the measured unit costs
    ours_full = (n_all * enc_per_image + p_all * dec_per_pair) / p_all
    out["ours_net_s_per_pair_full_graph"] = round(ours_full, 3)
    if not args.no_baseline:
        out["baseline_net_s_per_pair"] = round(base_net / p, 3)
        out["baseline_matching_s_per_pair"] = round(base_match / p, 3)
        out["speedup_measured"] = round(base_net / ours_net, 3)
        base_per_pair = base_net / p
        out["speedup_full_graph"] = round(base_per_pair / ours_full, 3)
        out["note"] = (
            f"measured on {p} pair(s) using {n_used} images; full graph = {n_all} images, {p_all} pairs "
            "(ours encodes each image once, baseline 2 images per pair)"
        )
    return out


def table(r: dict) -> str:
    rows = [
        ("model", r["model"]),
        ("device / threads", f"{r['device']} / {r['threads']}"),
        ("image (H, W)", r["image_hw"]),
        ("graph", f"{r['scene_graph']} over {r['n_images']} images = {r['graph_pairs']} pairs"),
        ("pairs timed (images encoded)", f"{r['pairs_timed']} ({r['images_encoded']})"),
        ("encoder s / image", r["encode_s_per_image"]),
        ("decoders+heads s / pair", r["decode_s_per_pair"]),
        ("ours network s / pair (measured)", r["ours_net_s_per_pair"]),
        ("ours network s / pair (full graph)", r["ours_net_s_per_pair_full_graph"]),
        ("matching s / pair", r["matching_s_per_pair"]),
        ("ours total s / pair (network + matching)", r["ours_total_s_per_pair"]),
    ]
    if "baseline_net_s_per_pair" in r:
        rows += [
            ("baseline network s / pair (re-encoding)", r["baseline_net_s_per_pair"]),
            ("speedup, measured pairs", r["speedup_measured"]),
            ("speedup, full graph (projected)", r["speedup_full_graph"]),
        ]
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-images", type=int, default=10)
    ap.add_argument("--pairs", type=int, default=0, help="time only the first K pairs of the graph (0 = all)")
    ap.add_argument("--scene-graph", default="swin-5")
    ap.add_argument("--width", type=int, default=512, help="network long side (images are width x 3/4 width)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--autocast", default=None, help="reduced-precision decoding, e.g. bf16 (run_pairs' autocast)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tiny", action="store_true", help="tiny network config (plumbing check)")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    import torch

    args.height = args.width * 3 // 4
    if args.threads is None:
        args.threads = torch.get_num_threads()
    logging.basicConfig(level=logging.WARNING)
    r = run(args)
    if args.json:
        json.dump(r, sys.stdout)
        sys.stdout.write("\n")
    else:
        print(table(r))


if __name__ == "__main__":
    main()
