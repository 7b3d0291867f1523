"""Retrieval on real photos with known overlap (issue 13): which pairs a retrieval graph chooses.

The photos are OpenCV's sample data, shipped by Debian's ``opencv-doc`` package (no download at run time):

    apt-get download opencv-doc && dpkg-deb -x opencv-doc_*.deb /tmp/opencv-doc
    python benchmarks/bench_retrieval_photos.py /tmp/opencv-doc/usr/share/doc/opencv-doc/examples/data

Known partners (same scene, overlapping views): the stereo pairs ``leftNN.jpg`` / ``rightNN.jpg`` (a chessboard
seen by two cameras at once, 13 poses), ``aloeL`` / ``aloeR``, ``graf1`` / ``graf3`` (a wall from two angles),
``box`` / ``box_in_scene``, ``basketball1`` / ``basketball2``. The photos are loaded as ``reconstruct`` loads them
(long side 512, cropped to multiples of 16), listed in a seeded random order, and paired by ``retrieval-K`` from the
SIFT similarity. Reported: for every photo, its most similar other photo and whether it is the known partner; the
share of partners found among each photo's top 1 and top K; the pairs of the graph. Not run by CI.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path


def partner_of(name: str, names: set[str]) -> str | None:
    """The known partner's file name, if it is in ``names``."""
    rules = [
        (r"^left(\d+)\.jpg$", r"right\1.jpg"),
        (r"^right(\d+)\.jpg$", r"left\1.jpg"),
        (r"^aloeL\.jpg$", "aloeR.jpg"),
        (r"^aloeR\.jpg$", "aloeL.jpg"),
        (r"^graf1\.png$", "graf3.png"),
        (r"^graf3\.png$", "graf1.png"),
        (r"^box\.png$", "box_in_scene.png"),
        (r"^box_in_scene\.png$", "box.png"),
        (r"^basketball1\.png$", "basketball2.png"),
        (r"^basketball2\.png$", "basketball1.png"),
    ]
    for pattern, repl in rules:
        if re.match(pattern, name):
            other = re.sub(pattern, repl, name)
            return other if other in names else None
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", help="opencv-doc's examples/data folder")
    ap.add_argument("--k", type=int, default=2, help="retrieval-K (default 2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import numpy as np

    from sparsega.frontend.images import load_images
    from sparsega.frontend.pairs import make_pairs, unique_pairs
    from sparsega.frontend.retrieval import sift_similarity

    folder = Path(args.folder)
    all_names = {p.name for p in folder.iterdir()}
    names = sorted(n for n in all_names if partner_of(n, all_names))
    if len(names) < 4:
        raise SystemExit(f"{folder}: fewer than 4 photos with a known partner; is it opencv-doc's examples/data?")
    order = np.random.default_rng(args.seed).permutation(len(names))
    names = [names[k] for k in order]
    images = load_images([folder / n for n in names], size=512)
    sim = sift_similarity([im.rgb for im in images])
    masked = sim - 10 * np.eye(len(names))
    ranked = np.argsort(-masked, axis=1, kind="stable")
    rows, top1, topk = [], 0, 0
    for i, name in enumerate(names):
        partner = partner_of(name, set(names))
        best = names[ranked[i, 0]]
        in_k = partner in {names[j] for j in ranked[i, : args.k]}
        top1 += best == partner
        topk += in_k
        rows.append({"photo": name, "most_similar": best, "partner": partner, "partner_in_top_k": bool(in_k)})
    pairs = unique_pairs(make_pairs(len(names), f"retrieval-{args.k}", similarity=sim))
    chosen = sorted(tuple(sorted((names[a], names[b]))) for a, b in pairs)
    known = {tuple(sorted((n, partner_of(n, set(names))))) for n in names}
    out = {
        "photos": len(names),
        "graph": f"retrieval-{args.k}",
        "pairs": len(chosen),
        "partner_is_top1": round(top1 / len(names), 3),
        f"partner_in_top{args.k}": round(topk / len(names), 3),
        "known_pairs_in_graph": f"{len(known & set(chosen))} of {len(known)}",
        "per_photo": rows,
        "chosen_pairs": chosen,
    }
    if args.json:
        print(json.dumps(out))
        return
    print(f"{out['photos']} photos, {out['graph']}: {out['pairs']} pairs; known partner pairs in the graph: "
          f"{out['known_pairs_in_graph']}; partner = most similar for {100 * out['partner_is_top1']:.0f} % of photos, "
          f"in the top {args.k} for {100 * out[f'partner_in_top{args.k}']:.0f} %")  # fmt: skip
    print("| photo | most similar | known partner | partner in top k |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['photo']} | {r['most_similar']} | {r['partner']} | {'yes' if r['partner_in_top_k'] else 'no'} |")
    print("pairs chosen:", ", ".join(f"{a}-{b}" for a, b in chosen))


if __name__ == "__main__":
    main()
