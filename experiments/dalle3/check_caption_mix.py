"""Check that zoo-recaption files are served as training captions (issue #17, item 3).

    python experiments/dalle3/check_caption_mix.py \
        synthetic_descriptive=.zoo_cache/recaptions/dalle3/shapes_train_synthetic_descriptive.pt \
        synthetic_short=.zoo_cache/recaptions/dalle3/shapes_train_synthetic_short.pt

For each file: loads it with ``weights_only=True`` (``torch.load``) and prints its meta; then composes zoo-train's own
data config (Hydra compose of ``conf/train.yaml`` with ``data=shapes``) with ``data.synthetic_captions={...}`` and
``data.caption_mix={synthetic_descriptive: 0.95, alt: 0.05}``, and prints the first batch's captions and the share of
each caption style over the first ``N`` (default 2000) training items (``N=...`` to change), plus whether every
served synthetic caption is the file's row of that item.
"""

from __future__ import annotations

import collections
import sys

import torch
from hydra import compose, initialize_config_module


def main(argv: list[str]) -> None:
    files = dict(a.split("=", 1) for a in argv if "=" in a and not a.startswith("N="))
    n = int(next((a[2:] for a in argv if a.startswith("N=")), 2000))
    for style, path in files.items():
        obj = torch.load(path, weights_only=True)
        print(f"{style}: {path}: {len(obj['captions'])} captions (weights_only load); meta {obj['meta']}")
    mix = "{synthetic_descriptive: 0.95, alt: 0.05}" if "synthetic_descriptive" in files else None
    synth = "{" + ", ".join(f"{k}: {v}" for k, v in files.items()) + "}"
    overrides = ["data=shapes", f"data.synthetic_captions={synth}", "data.batch_size=8"]
    if mix:
        overrides.append(f"data.caption_mix={mix}")
    with initialize_config_module("conf", version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    from zoo.config import instantiate

    dm = instantiate(cfg.data, "data")
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    print(f"\ndata.caption_mix={mix}; first training batch (caption_style: caption):")
    for style, cap in zip(batch["caption_style"], batch["caption"], strict=True):
        print(f"  {style:>22}: {cap}")
    ds = dm.dataset("train")
    rows = {s: torch.load(p, weights_only=True)["captions"] for s, p in files.items()}
    styles, agree = collections.Counter(), 0
    for i in range(min(n, len(ds))):
        s = ds[i]
        styles[s["caption_style"]] += 1
        agree += s["caption_style"] not in rows or s["caption"] == rows[s["caption_style"]][i]
    total = sum(styles.values())
    print(
        f"\nstyles served over the first {total} training items: "
        + ", ".join(f"{k} {v / total:.3f}" for k, v in styles.most_common())
    )
    print(f"synthetic captions equal to their file's row: {agree == total}")


if __name__ == "__main__":
    main(sys.argv[1:])
