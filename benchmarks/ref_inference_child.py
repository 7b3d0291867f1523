"""The reference's side of ``bench_inference.py --against-reference``; runs under the reference's Python.

Not a sparsega module: it imports naver's MASt3R (found through PYTHONPATH, set by the parent from MAST3R_REF and
MAST3R_EXTRA_PATH) and times, per pair, the steps of its ``forward_mast3r``: ``symmetric_inference`` split at its
stages (``_encode_image_pairs``; then per direction ``_decoder`` and ``_downstream_head`` x2, as that function does),
``extract_correspondences`` (``fast_reciprocal_NNs``) and the cache write (``torch.save`` of the four pointmaps and
confidences, and of the matches). The outputs of the first pair go to ``--out`` for the agreement check.

    REF_PY ref_inference_child.py --checkpoint CKPT --images A.png B.png ... --pairs '[[0,1],...]' --out ref.npz
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--images", nargs="+", required=True)
    ap.add_argument("--pairs", required=True, help="JSON list of [i, j]")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import mast3r.utils.path_to_dust3r  # noqa: F401  (the reference's own way to find dust3r)
    from dust3r.utils.image import load_images
    from mast3r.cloud_opt.sparse_ga import extract_correspondences
    from mast3r.model import load_model

    t0 = time.perf_counter()
    model = load_model(args.checkpoint, "cpu", verbose=False).eval()
    # load_model is lenient (strict=False): make sure every weight of the file landed
    model.load_state_dict(torch.load(args.checkpoint, map_location="cpu", weights_only=False)["model"], strict=True)
    t_load = time.perf_counter() - t0
    imgs = load_images(args.images, size=args.size, verbose=False)
    pairs = json.loads(args.pairs)
    stages = {"encode_s": 0.0, "decode_heads_s": 0.0, "matching_s": 0.0, "cache_write_s": 0.0}
    per_pair = []
    saved = {}
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        for n, (i, j) in enumerate(pairs):
            a, b = imgs[i], imgs[j]
            shape1, shape2 = torch.from_numpy(a["true_shape"]), torch.from_numpy(b["true_shape"])
            t_start = time.perf_counter()
            feat1, feat2, pos1, pos2 = model._encode_image_pairs(a["img"], b["img"], shape1, shape2)
            t1 = time.perf_counter()

            def decoder(f1, f2, p1, p2, s1, s2):
                dec1, dec2 = model._decoder(f1, p1, f2, p2)
                res1 = model._downstream_head(1, [tok.float() for tok in dec1], s1)
                res2 = model._downstream_head(2, [tok.float() for tok in dec2], s2)
                return res1, res2

            res11, res21 = decoder(feat1, feat2, pos1, pos2, shape1, shape2)
            res22, res12 = decoder(feat2, feat1, pos2, pos1, shape2, shape1)
            t2 = time.perf_counter()
            res = (res11, res21, res22, res12)
            descs = [r["desc"][0] for r in res]
            qonfs = [r["desc_conf"][0] for r in res]
            corres = extract_correspondences(descs, qonfs, device="cpu", subsample=8)
            t3 = time.perf_counter()
            x11, x21, x22, x12 = [r["pts3d"][0] for r in res]
            c11, c21, c22, c12 = [r["conf"][0] for r in res]
            torch.save((x11, c11, x21, c21), os.path.join(tmp, f"{n}_1.pth"))
            torch.save((x22, c22, x12, c12), os.path.join(tmp, f"{n}_2.pth"))
            score = (c11.mean() * c12.mean() * c21.mean() * c22.mean()).sqrt().sqrt()
            torch.save(
                ((float(score), float(corres[2].sum()), len(corres[2])), corres), os.path.join(tmp, f"{n}_c.pth")
            )
            t4 = time.perf_counter()
            stages["encode_s"] += t1 - t_start
            stages["decode_heads_s"] += t2 - t1
            stages["matching_s"] += t3 - t2
            stages["cache_write_s"] += t4 - t3
            per_pair.append(t4 - t_start)
            if n == 0:
                for name, r in zip(("11", "21", "22", "12"), res):
                    saved[f"pts{name}"] = r["pts3d"][0].numpy()
                    saved[f"conf{name}"] = r["conf"][0].numpy()
                    saved[f"desc{name}"] = r["desc"][0].numpy()
                saved["xy1"], saved["xy2"] = (np.asarray(c, dtype=np.int64) for c in corres[:2])
                saved["match_conf"] = np.asarray(corres[2], dtype=np.float32)
    np.savez(args.out, **saved)
    print(json.dumps({"load_s": t_load, "per_pair_s": per_pair, **stages, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
