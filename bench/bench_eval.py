"""Eval pipeline cost: Inception feature extraction images/s (fp32 vs bf16 autocast), the statistics (covariance,
eigvals FID, KID subsets), the extrapolated end-to-end time of an FID over 10k fake images, and the offline metric
suite zoo-eval runs by default on shapes (FD_CLIP + CLIP score with a CLIP, prompt fidelity + domain IS with the
shapes judge): images/s and the end-to-end time for 10k images, extrapolated from ``--suite-n`` measured images.

    python bench/bench_eval.py [--n 64] [--batch 32] [--resolution 256] [--weights FILE] [--threads 2]
                               [--suite-n 1024] [--clip CKPT] [--skip-inception] [--bf16-anyway]

Random Inception weights (built like the tests do) are fine for timing; pass --weights to time real ones.
The bf16 Inception rows (and the bf16 figures derived from them) run only on a CPU with native bf16
(``zoo.precision.bench_bf16``); elsewhere they are skipped and null in the JSON line, and ``--bf16-anyway``
times them anyway (the emulation, ~100x slower than fp32 on an AVX2-only CPU).
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
from zoo.precision import bench_bf16, describe_cpu


def _timed(fn, repeat: int = 1) -> float:
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t) / repeat


def main() -> None:
    print(describe_cpu())  # what the figures below were measured on
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=64, help="images timed per precision")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--resolution", type=int, default=256, help="input size (resized to 299 inside)")
    ap.add_argument("--weights", default=None, help="Inception weights file (default: random, built in a temp dir)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--target", type=int, default=10_000, help="extrapolate an FID over this many fake images")
    ap.add_argument("--suite-n", type=int, default=1024, help="shapes images timed through the offline metric suite")
    ap.add_argument(
        "--clip",
        default=None,
        help="CLIP checkpoint for the suite (default: logs/demo/clip's, else a random zoo-clip-shapes: same cost)",
    )
    ap.add_argument("--skip-inception", action="store_true", help="only time the offline metric suite")
    ap.add_argument("--bf16-anyway", action="store_true", help="time bf16 even where the CPU only emulates it")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.skip_inception:
        print("BENCH_JSON " + json.dumps(bench_suite(args)))  # the line bench/run_all.py keeps as the summary
        return

    tmp = tempfile.TemporaryDirectory()
    weights = args.weights or make_random_inception_weights(Path(tmp.name) / INCEPTION_FILENAME)
    g = torch.Generator().manual_seed(0)
    small = torch.rand(args.n, 3, args.resolution // 8, args.resolution // 8, generator=g)
    images = torch.nn.functional.interpolate(small, size=args.resolution, mode="bilinear") * 2 - 1  # smooth, [-1, 1]
    print(
        f"threads={torch.get_num_threads()} n={args.n} batch={args.batch} input={args.resolution}px "
        f"weights={'random' if args.weights is None else args.weights}"
    )

    bf16 = bench_bf16(args.bf16_anyway)
    res: dict = {"threads": torch.get_num_threads(), "n": args.n, "batch": args.batch, "resolution": args.resolution}
    feats = {}
    print(f"{'prec':5} {'layout':14} {'images/s':>9} {'s/image':>8}")
    for layout in ("contiguous", "channels_last"):
        for prec, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
            if prec == "bf16" and not bf16:
                res[f"{prec}_{layout}_images_per_s"] = None
                continue
            ex = InceptionFeatures(weights, autocast_dtype=dtype, channels_last=layout == "channels_last")
            ex(images[:2])  # warm-up (oneDNN primitive creation)
            t = time.perf_counter()
            feats[prec] = ex.extract(images, batch_size=args.batch, progress=False)["2048"]
            ips = args.n / (time.perf_counter() - t)
            res[f"{prec}_{layout}_images_per_s"] = round(ips, 2)
            print(f"{prec:5} {layout:14} {ips:>9.2f} {1 / ips:>8.3f}", flush=True)
    for prec in ("fp32", "bf16"):  # the default layout (channels_last) is what the extrapolation uses
        res[f"{prec}_images_per_s"] = res[f"{prec}_channels_last_images_per_s"]
    half = args.n // 2
    fid32 = frechet_distance(feats["fp32"][:half], feats["fp32"][half:])
    if bf16:
        rel = float((feats["bf16"] - feats["fp32"]).abs().mean() / feats["fp32"].abs().mean())
        fid16 = frechet_distance(feats["bf16"][:half], feats["bf16"][half:])
        res.update(bf16_feature_rel_err=round(rel, 5), fid_fp32=fid32, fid_bf16=fid16)
        print(
            f"bf16 vs fp32: mean |dfeature| / mean |feature| = {rel:.4f}; FD(half, half) fp32 {fid32:.4f} "
            f"bf16 {fid16:.4f}"
        )
    else:
        res.update(bf16_feature_rel_err=None, fid_fp32=fid32, fid_bf16=None)
        print(f"FD(half, half) fp32 {fid32:.4f}")

    # statistics at the real sizes: covariance of `target` x 2048 features, the 2048x2048 eigvals FID, KID subsets
    f = torch.randn(args.target, 2048, generator=g).abs()
    t_stats = _timed(lambda: fid_statistics(f))
    sa = fid_statistics(f)
    sb = {"mu": sa["mu"] + 0.01, "sigma": sa["sigma"] * 1.1}
    t_fid = _timed(lambda: frechet_distance_from_statistics(sa, sb))
    n_kid = 5
    t_kid = _timed(lambda: kid(f, f.flip(0), subsets=n_kid, subset_size=min(1000, args.target))) * 100 / n_kid
    res.update(stats_s=round(t_stats, 2), fid_eigvals_s=round(t_fid, 2), kid_100x1000_s=round(t_kid, 2))
    print(
        f"statistics of {args.target} x 2048: {t_stats:.2f} s; FID (torch-fidelity eigvals 2048^2): {t_fid:.2f} s; "
        f"KID 100 subsets x 1000 (extrapolated from {n_kid}): {t_kid:.1f} s"
    )

    for prec in ("fp32", "bf16"):
        ips = res[f"{prec}_images_per_s"]  # channels_last
        if ips is None:  # bf16 skipped
            res[f"fid_{args.target}_{prec}_cached_real_min"] = None
            res[f"fid_{args.target}_{prec}_both_sides_min"] = None
            continue
        fake_only = args.target / ips + t_stats + t_fid
        both = 2 * args.target / ips + 2 * t_stats + t_fid
        res[f"fid_{args.target}_{prec}_cached_real_min"] = round(fake_only / 60, 1)
        res[f"fid_{args.target}_{prec}_both_sides_min"] = round(both / 60, 1)
        print(
            f"FID over {args.target} fakes, {prec} (extrapolated from {args.n} measured images): "
            f"{fake_only / 60:.1f} min with cached real stats, "
            f"{both / 60:.1f} min extracting {args.target} real images too (+{t_kid / 60:.1f} min for KID)"
        )
    res.update(bench_suite(args))
    print("BENCH_JSON " + json.dumps(res))  # the line bench/run_all.py keeps as the summary
    tmp.cleanup()


def bench_suite(args) -> dict:
    """zoo-eval's default offline metrics on ``--suite-n`` shapes images (32 px) at blur radius 0, extrapolated to
    ``--target``; the one-off costs (real CLIP features, cached afterwards) are timed separately."""
    from eval.ablations import MetricSuite
    from eval.generators import RealBlurredGenerator, generate_images
    from eval.judge import ShapesJudge, Vocab
    from eval.metrics import RealStatsCache
    from eval.shapes_protocol import ShapesProtocol
    from zoo.models.clip.scorer import ClipScorer

    n = args.suite_n
    t = time.perf_counter()
    es = ShapesProtocol(n=n, resolution=32).load()
    t_render = time.perf_counter() - t
    fakes = generate_images(RealBlurredGenerator(radius=1).bind(es), es.captions, batch_size=256, progress=False)
    ckpt = args.clip or (
        "logs/demo/clip/checkpoints/last.ckpt" if Path("logs/demo/clip/checkpoints/last.ckpt").is_file() else None
    )
    clip = ClipScorer.from_lightning_checkpoint(ckpt) if ckpt else ClipScorer.from_open_clip("zoo-clip-shapes")
    judge = ShapesJudge(Vocab.from_world()).eval()  # untrained: same cost as the trained one
    # zoo-eval keeps the real side's CLIP features in its RealStatsCache: without one every timed call below
    # also extracted them (twice the CLIP images of the "img/s" printed, and the "cached" blurred row was not)
    cache_dir = tempfile.TemporaryDirectory()
    cache = RealStatsCache(cache_dir.name)
    suite = MetricSuite(
        ["fd_clip", "clip_score", "prompt_fidelity", "is_judge"],
        clip=clip,
        judge=judge,
        cache=cache,
        batch_size=256,
        progress=False,
    )
    t = time.perf_counter()
    suite.evaluate(fakes, es)  # first call: also the real side's CLIP features and the caption embeddings
    t_first = time.perf_counter() - t
    per = {}
    for name, metrics, kw in (
        ("clip", ["fd_clip", "clip_score"], {"clip": clip}),
        ("judge", ["prompt_fidelity", "is_judge"], {"judge": judge}),
    ):
        s = MetricSuite(metrics, batch_size=256, progress=False, cache=cache, **kw)
        s._text_emb = suite._text_emb
        t = time.perf_counter()
        s.evaluate(fakes, es) if name == "judge" else s._clip(fakes, es, 0.0)
        per[name] = time.perf_counter() - t
    # the real side at radius 2 as a rerun of zoo-eval finds it: cached
    cache.get_or_compute(es.stats_key(suite.clip_id, 2), lambda: suite._clip_features(es.real, 2, "real"))
    t = time.perf_counter()
    suite.evaluate(fakes, es, blur_radius=2)
    t_blur = time.perf_counter() - t
    cache_dir.cleanup()
    scale = args.target / n
    out = {
        "suite_n": n,
        "suite_clip": ckpt or "random zoo-clip-shapes",
        "render_real_s": round(t_render, 2),
        "suite_first_call_s": round(t_first, 2),
        "suite_clip_s": round(per["clip"], 2),
        "suite_judge_s": round(per["judge"], 2),
        "suite_blur2_row_s": round(t_blur, 2),
        f"suite_{args.target}_row_min_extrapolated": round(t_blur * scale / 60, 2),
        f"suite_{args.target}_fig9_blur_table_min_extrapolated": round(5 * t_blur * scale / 60, 2),
    }
    print(
        f"offline suite on {n} shapes images (32 px, CLIP {out['suite_clip']}): first row {t_first:.2f} s "
        f"(incl. real CLIP features + caption embeddings), CLIP metrics {per['clip']:.2f} s "
        f"({n / per['clip']:.0f} img/s), judge metrics {per['judge']:.2f} s ({n / per['judge']:.0f} img/s), "
        f"one blurred row {t_blur:.2f} s"
    )
    print(
        f"extrapolated to {args.target} images (x{scale:.1f}, linear in N): {t_blur * scale / 60:.2f} min per row, "
        f"{5 * t_blur * scale / 60:.2f} min for the 5-radius blur table (real CLIP statistics cached)"
    )
    return out


if __name__ == "__main__":
    main()
