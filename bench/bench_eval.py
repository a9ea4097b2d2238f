"""FID pipeline cost: Inception feature extraction images/s (fp32 vs bf16 autocast), the statistics (covariance,
eigvals FID, KID subsets), and the extrapolated end-to-end time of an FID over 10k fake images.

    python bench/bench_eval.py [--n 64] [--batch 32] [--resolution 256] [--weights FILE] [--threads 2]

Random Inception weights (built like the tests do) are fine for timing; pass --weights to time real ones.
The machine is shared: read the figures as orders of magnitude. Under load, one thread is much faster than two
oversubscribed ones, for torch (--threads 1) and for numpy's OpenBLAS eigvals (OMP_NUM_THREADS=1 in the env):

    OMP_NUM_THREADS=1 python bench/bench_eval.py --threads 1
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from eval.features import INCEPTION_FILENAME, InceptionFeatures, make_random_inception_weights
from eval.metrics import fid_statistics, frechet_distance, frechet_distance_from_statistics, kid


def _timed(fn, repeat: int = 1) -> float:
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t) / repeat


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=64, help="images timed per precision")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--resolution", type=int, default=256, help="input size (resized to 299 inside)")
    ap.add_argument("--weights", default=None, help="Inception weights file (default: random, built in a temp dir)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--target", type=int, default=10_000, help="extrapolate an FID over this many fake images")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    tmp = tempfile.TemporaryDirectory()
    weights = args.weights or make_random_inception_weights(Path(tmp.name) / INCEPTION_FILENAME)
    g = torch.Generator().manual_seed(0)
    small = torch.rand(args.n, 3, args.resolution // 8, args.resolution // 8, generator=g)
    images = torch.nn.functional.interpolate(small, size=args.resolution, mode="bilinear") * 2 - 1  # smooth, [-1, 1]
    print(f"threads={torch.get_num_threads()} n={args.n} batch={args.batch} input={args.resolution}px "
          f"weights={'random' if args.weights is None else args.weights}")

    res: dict = {"threads": torch.get_num_threads(), "n": args.n, "batch": args.batch, "resolution": args.resolution}
    feats = {}
    print(f"{'prec':5} {'layout':14} {'images/s':>9} {'s/image':>8}")
    for layout in ("contiguous", "channels_last"):
        for prec, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
            ex = InceptionFeatures(weights, autocast_dtype=dtype, channels_last=layout == "channels_last")
            ex(images[:2])  # warm-up (oneDNN primitive creation)
            t = time.perf_counter()
            feats[prec] = ex.extract(images, batch_size=args.batch, progress=False)["2048"]
            ips = args.n / (time.perf_counter() - t)
            res[f"{prec}_{layout}_images_per_s"] = round(ips, 2)
            print(f"{prec:5} {layout:14} {ips:>9.2f} {1 / ips:>8.3f}", flush=True)
    for prec in ("fp32", "bf16"):  # the default layout (channels_last) is what the extrapolation uses
        res[f"{prec}_images_per_s"] = res[f"{prec}_channels_last_images_per_s"]
    rel = float((feats["bf16"] - feats["fp32"]).abs().mean() / feats["fp32"].abs().mean())
    half = args.n // 2
    fid32 = frechet_distance(feats["fp32"][:half], feats["fp32"][half:])
    fid16 = frechet_distance(feats["bf16"][:half], feats["bf16"][half:])
    res.update(bf16_feature_rel_err=round(rel, 5), fid_fp32=fid32, fid_bf16=fid16)
    print(f"bf16 vs fp32: mean |dfeature| / mean |feature| = {rel:.4f}; "
          f"FD(half, half) fp32 {fid32:.4f} bf16 {fid16:.4f}")

    # statistics at the real sizes: covariance of `target` x 2048 features, the 2048x2048 eigvals FID, KID subsets
    f = torch.randn(args.target, 2048, generator=g).abs()
    t_stats = _timed(lambda: fid_statistics(f))
    sa = fid_statistics(f)
    sb = {"mu": sa["mu"] + 0.01, "sigma": sa["sigma"] * 1.1}
    t_fid = _timed(lambda: frechet_distance_from_statistics(sa, sb))
    n_kid = 5
    t_kid = _timed(lambda: kid(f, f.flip(0), subsets=n_kid, subset_size=min(1000, args.target))) * 100 / n_kid
    res.update(stats_s=round(t_stats, 2), fid_eigvals_s=round(t_fid, 2), kid_100x1000_s=round(t_kid, 2))
    print(f"statistics of {args.target} x 2048: {t_stats:.2f} s; FID (torch-fidelity eigvals 2048^2): {t_fid:.2f} s; "
          f"KID 100 subsets x 1000 (extrapolated from {n_kid}): {t_kid:.1f} s")

    for prec in ("fp32", "bf16"):
        ips = res[f"{prec}_images_per_s"]  # channels_last
        fake_only = args.target / ips + t_stats + t_fid
        both = 2 * args.target / ips + 2 * t_stats + t_fid
        res[f"fid_{args.target}_{prec}_cached_real_min"] = round(fake_only / 60, 1)
        res[f"fid_{args.target}_{prec}_both_sides_min"] = round(both / 60, 1)
        print(f"FID over {args.target} fakes, {prec}: {fake_only / 60:.1f} min with cached real stats, "
              f"{both / 60:.1f} min extracting {args.target} real images too (+{t_kid / 60:.1f} min for KID)")
    print(json.dumps(res))
    tmp.cleanup()


if __name__ == "__main__":
    main()
