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

``--against-reference``: the reference itself (naver's MASt3R built by ``../shared/bench/setup_reference.sh``) run
in its own interpreter by ``ref_inference_child.py``: one checkpoint file of seeded random weights loaded by both
systems, the same PNGs, the same first ``--pairs`` pairs; per-stage seconds per pair of both (encoder, decoders +
heads, matching, cache write), the full-graph projection of ours (encoder cost x N / P), and the agreement of the
first pair's outputs (max relative difference of every map, share of identical matches)::

    MAST3R_REF=/tmp/ref/mast3r MAST3R_EXTRA_PATH=../shared/bench/refstubs REF_PY=/tmp/refenv/bin/python \
        python benchmarks/bench_inference.py --against-reference --pairs 2 --threads 2

Matching (reciprocal NNs on the descriptors) is the same code for both and is reported separately. With ``--pairs K``
only the first K pairs run; the table then also extrapolates to the whole graph from the measured per-image encoder
and per-pair decoder costs (ours encodes each of the N images once, the baseline encodes 2 images per pair).
Not run by CI.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
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


def against_reference(args: argparse.Namespace) -> dict:
    """Side by side with naver's MASt3R (``ref_inference_child.py`` under ``--ref-python``): one checkpoint file of
    seeded random weights loaded by both, the same PNGs, the same first ``--pairs`` pairs of the graph; seconds per
    pair by stage for both, and the agreement of the first pair's outputs."""
    import subprocess

    import numpy as np
    import torch

    from sparsega.frontend.cache import CacheDir
    from sparsega.frontend.images import load_images
    from sparsega.frontend.inference import run_pairs
    from sparsega.frontend.model import build_net, load_checkpoint
    from sparsega.frontend.pairs import make_pairs, unique_pairs

    ref_root = os.environ.get("MAST3R_REF")
    if not ref_root or not args.ref_python:
        raise SystemExit("--against-reference needs MAST3R_REF (a naver/mast3r checkout) and --ref-python / REF_PY")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    text = TINY_MAST3R if args.tiny else VITL_MAST3R
    out: dict = {"model": "tiny" if args.tiny else "ViT-L MASt3R (random weights)", "threads": args.threads}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        net = build_net(text).eval()
        ckpt = tmp / "random_weights.pth"
        torch.save({"args": argparse.Namespace(model=text), "model": net.state_dict()}, ckpt)
        del net
        paths = make_photos(tmp, args.n_images, 2 * args.width, 2 * args.height, args.seed)
        all_pairs = unique_pairs(make_pairs(args.n_images, args.scene_graph))
        pairs = all_pairs[: args.pairs] if args.pairs else all_pairs

        # the reference, in its own interpreter
        env = dict(os.environ)
        extra = [p for p in os.environ.get("MAST3R_EXTRA_PATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join([ref_root, *extra])
        env["OMP_NUM_THREADS"] = str(args.threads)
        child = Path(__file__).with_name("ref_inference_child.py")
        cmd = [args.ref_python, str(child), "--checkpoint", str(ckpt), "--images", *paths]
        cmd += ["--pairs", json.dumps(pairs.tolist()), "--size", str(args.width), "--threads", str(args.threads)]
        cmd += ["--out", str(tmp / "ref.npz")]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"reference run failed:\n{done.stderr[-3000:]}")
        ref = json.loads(done.stdout.strip().splitlines()[-1])
        ref_out = dict(np.load(tmp / "ref.npz"))

        # ours: load the same file, same images, float32, with an on-disk cache (its writes are timed)
        t0 = time.perf_counter()
        net = load_checkpoint(ckpt)
        t_load = time.perf_counter() - t0
        images = load_images(paths, size=args.width)
        stats: dict = {}
        t0 = time.perf_counter()
        preds = run_pairs(
            net,
            images,
            pairs,
            cache=CacheDir(tmp / "cache", net.identity),
            batch_size=args.batch_size,
            progress=False,
            stats=stats,
            storage=args.storage,
        )
        ours_total = time.perf_counter() - t0
    p, n_all, p_all = len(pairs), args.n_images, len(all_pairs)
    enc_img = stats["encode_s"] / max(stats["encoded"], 1)
    write_s = ours_total - stats["encode_s"] - stats["decode_s"] - stats["matching_s"]
    ours_rest = (stats["decode_s"] + stats["matching_s"] + write_s) / p
    ours_full = (n_all * enc_img) / p_all + ours_rest
    ref_pp = float(np.mean(ref["per_pair_s"]))
    out.update(
        image_hw=list(images[0].true_shape),
        scene_graph=f"{args.scene_graph} over {n_all} images = {p_all} pairs",
        pairs_timed=p,
        storage=args.storage,
        load_s={"ours": round(t_load, 2), "reference": round(ref["load_s"], 2)},
        ours_s_per_pair={
            "encoder (per image encoded, x N/P on the full graph)": round(enc_img, 3),
            "encoder, full graph share": round(n_all * enc_img / p_all, 3),
            "decoders + heads": round(stats["decode_s"] / p, 3),
            "matching": round(stats["matching_s"] / p, 3),
            "cache write + bookkeeping": round(write_s / p, 3),
            "total, measured pairs": round(ours_total / p, 3),
            "total, full graph": round(ours_full, 3),
        },
        reference_s_per_pair={
            "encoder (2 images per pair)": round(ref["encode_s"] / p, 3),
            "decoders + heads": round(ref["decode_heads_s"] / p, 3),
            "matching": round(ref["matching_s"] / p, 3),
            "cache write": round(ref["cache_write_s"] / p, 3),
            "total": round(ref_pp, 3),
        },
        speedup_full_graph=round(ref_pp / ours_full, 3),
        speedup_measured_pairs=round(ref_pp / (ours_total / p), 3),
    )
    first = preds[0]
    rel = {}
    for name in ("11", "21", "22", "12"):
        for field in ("pts", "conf"):
            r, o = ref_out[f"{field}{name}"], getattr(first, f"{field}{name}")
            rel[f"{field}{name}"] = float(np.abs(o - r).max() / max(np.abs(r).max(), 1e-12))
    out["max_rel_diff_first_pair"] = {k: f"{v:.2e}" for k, v in rel.items()}
    mine = {tuple(x) for x in np.concatenate([first.xy1, first.xy2], 1).tolist()}
    theirs = {tuple(x) for x in np.concatenate([ref_out["xy1"], ref_out["xy2"]], 1).tolist()}
    out["matches_first_pair"] = {
        "ours": len(mine),
        "reference": len(theirs),
        "identical": len(mine & theirs),
        "share_identical": round(len(mine & theirs) / max(len(mine | theirs), 1), 5),
    }
    return out


def precision(args: argparse.Namespace) -> dict:
    """Deviation of reduced precision (``--autocast``, default bf16) from float32 on the golden checkpoints shipped
    with the tests (and on the ViT-L random-weights net unless ``--tiny``): max relative difference of every map and
    share of identical matches over the first ``--pairs`` pairs of rendered photos; seconds of both runs."""
    import numpy as np
    import torch

    from sparsega.frontend.images import load_images
    from sparsega.frontend.inference import run_pairs
    from sparsega.frontend.model import build_net, load_checkpoint
    from sparsega.frontend.pairs import make_pairs, unique_pairs

    torch.set_num_threads(args.threads)
    golden = Path(__file__).resolve().parents[1] / "tests" / "data" / "golden"
    nets = [(name, load_checkpoint(golden / f"{name}.pth")) for name in ("model_tiny_a", "dust3r_tiny")]
    if not args.tiny:
        torch.manual_seed(args.seed)
        nets.append(("ViT-L random weights", build_net(VITL_MAST3R).eval().requires_grad_(False)))
    mode = args.autocast or "bf16"
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_photos(Path(tmp), args.n_images, 2 * args.width, 2 * args.height, args.seed)
        pairs = unique_pairs(make_pairs(args.n_images, args.scene_graph))[: args.pairs or 4]
        for name, net in nets:
            images = load_images(paths, size=224 if max(net.img_size) <= 224 else args.width)
            runs = {}
            for ac in (None, mode):
                t0 = time.perf_counter()
                runs[ac] = run_pairs(net, images, pairs, progress=False, storage="float32", autocast=ac)
                runs[f"{ac}_s"] = time.perf_counter() - t0
            rel: dict[str, float] = {}
            same = total = 0
            for full, low in zip(runs[None], runs[mode]):
                for field in ("pts11", "pts21", "pts22", "pts12", "conf11", "conf21", "conf22", "conf12"):
                    a, b = getattr(full, field), getattr(low, field)
                    key = field[:-2]  # pts / conf: the worst of the four maps
                    rel[key] = max(rel.get(key, 0.0), float(np.abs(b - a).max() / np.abs(a).max()))
                m_full = {tuple(x) for x in np.concatenate([full.xy1, full.xy2], 1).tolist()}
                m_low = {tuple(x) for x in np.concatenate([low.xy1, low.xy2], 1).tolist()}
                same += len(m_full & m_low)
                total += len(m_full | m_low)
            rows[name] = {
                "image_hw": list(images[0].true_shape),
                "pairs": len(pairs),
                "max_rel_diff": {k: f"{v:.2e}" for k, v in rel.items()},
                "share_identical_matches": round(same / max(total, 1), 4),
                "float32_s": round(runs["None_s"], 2),
                f"{mode}_s": round(runs[f"{mode}_s"], 2),
            }
    return {"autocast": mode, "device": "cpu", "threads": args.threads, "nets": rows}


def _rss_mb() -> float:
    """This process's resident memory now (VmRSS), MB; 0 where /proc is missing."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def memory(args: argparse.Namespace) -> dict:
    """Resident memory of the front-end over a long run: ``--n-images`` photos (default graph swin-5), the golden
    tiny MASt3R checkpoint at its 224 size, predictions streamed to an on-disk cache as ``reconstruct`` does;
    RSS is sampled every 0.1 s and reported against the number of pairs written so far."""
    import threading

    import torch

    from sparsega.frontend.cache import CacheDir
    from sparsega.frontend.images import load_images
    from sparsega.frontend.inference import CACHE_NAMESPACE, run_pairs
    from sparsega.frontend.model import load_checkpoint
    from sparsega.frontend.pairs import make_pairs, unique_pairs

    torch.set_num_threads(args.threads)
    golden = Path(__file__).resolve().parents[1] / "tests" / "data" / "golden" / "model_tiny_a.pth"
    net = load_checkpoint(golden)
    samples: list[tuple[float, int, float]] = []
    stop = threading.Event()
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_photos(Path(tmp), args.n_images, 2 * args.width, 2 * args.height, args.seed)
        images = load_images(paths, size=224)
        pairs = unique_pairs(make_pairs(args.n_images, args.scene_graph))
        cache = CacheDir(Path(tmp) / "cache", net.identity)
        entries = Path(tmp) / "cache" / CACHE_NAMESPACE

        def sample() -> None:
            t0 = time.perf_counter()
            while not stop.is_set():
                written = sum(1 for _ in entries.rglob("*.safetensors")) if entries.is_dir() else 0
                samples.append((time.perf_counter() - t0, written, _rss_mb()))
                stop.wait(0.1)

        rss_start = _rss_mb()
        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        t0 = time.perf_counter()
        run_pairs(net, images, pairs, cache=cache, stream=True, progress=False)
        wall = time.perf_counter() - t0
        stop.set()
        thread.join()
    p = len(pairs)
    marks = {}
    for frac in (0.1, 0.25, 0.5, 0.75, 1.0):
        upto = [rss for _, written, rss in samples if written <= round(frac * p)]
        marks[f"peak RSS MB up to {round(frac * p)} pairs"] = round(max(upto), 1) if upto else None
    return {
        "net": "model_tiny_a (golden checkpoint)",
        "image_hw": list(images[0].true_shape),
        "graph": f"{args.scene_graph} over {args.n_images} images = {p} pairs",
        "rss_before_mb": round(rss_start, 1),
        **marks,
        "wall_s": round(wall, 1),
        "threads": args.threads,
    }


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
    ap.add_argument(
        "--against-reference",
        action="store_true",
        help="side by side with naver's MASt3R (needs MAST3R_REF, MAST3R_EXTRA_PATH as for ../shared/bench, and "
        "--ref-python); the same random weights loaded by both from one checkpoint file",
    )
    ap.add_argument(
        "--precision",
        action="store_true",
        help="deviation of --autocast (default bf16) from float32 on the golden checkpoints and the ViT-L net",
    )
    ap.add_argument(
        "--memory",
        action="store_true",
        help="peak RSS against pairs done over --n-images photos (use 50), tiny golden checkpoint, streamed cache",
    )
    ap.add_argument("--ref-python", default=os.environ.get("REF_PY"), help="the reference's interpreter (REF_PY)")
    ap.add_argument("--storage", default="float32", help="our cache form in --against-reference (compact/float32)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    import torch

    args.height = args.width * 3 // 4
    if args.threads is None:
        args.threads = torch.get_num_threads()
    logging.basicConfig(level=logging.WARNING)
    if args.memory:
        print(json.dumps(memory(args), indent=None if args.json else 1))
        return
    if args.precision:
        print(json.dumps(precision(args), indent=None if args.json else 1))
        return
    if args.against_reference:
        r = against_reference(args)
        print(json.dumps(r, indent=None if args.json else 1))
        return
    r = run(args)
    if args.json:
        json.dump(r, sys.stdout)
        sys.stdout.write("\n")
    else:
        print(table(r))


if __name__ == "__main__":
    main()
