"""Can a CLIP image tower learn an attribute at all? Train it with the attribute's labels directly.

A diagnostic for the contrastive runs in README.md: the shapes CLIP's image tower (``preset=shapes``, ViT, or
``shapes_rn``, ResNet) plus a linear head, trained with cross-entropy on single-object training scenes, scored on
512 test scenes. Prints the loss every 50 steps, the seconds taken and the test accuracy.

    python experiments/clip/supervised_towers.py --preset shapes --task shape --steps 300
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from zoo.data.shapes import POSITIONS, SHAPES, ShapesDataset
from zoo.models.clip.lit import ClipLit
from zoo.precision import cpu_has_native_bf16, describe_cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="shapes", help="a CLIP preset: shapes (ViT) or shapes_rn (ResNet)")
    ap.add_argument("--task", choices=["shape", "position"], default="shape")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=128)
    args = ap.parse_args()
    bf16 = cpu_has_native_bf16()  # precision from the hardware: bf16 autocast only where it is fast
    print(describe_cpu(), "| threads", torch.get_num_threads(), "| bf16 autocast" if bf16 else "| fp32")
    torch.manual_seed(0)
    lit = ClipLit(preset=args.preset)
    tower = lit.clip.visual
    classes = SHAPES if args.task == "shape" else POSITIONS
    head = torch.nn.Linear(lit.clip.text_projection.shape[1], len(classes))  # on the embedding, as CLIP uses it
    opt = torch.optim.AdamW([*tower.parameters(), *head.parameters()], lr=1e-3, weight_decay=0.1)
    train = ShapesDataset("train", size=args.steps * args.batch, max_objects=1)
    test = ShapesDataset("test", size=512, max_objects=1)

    def batch(ds, idx):
        items = [ds[i] for i in idx]
        x = torch.stack([it["image"] for it in items])
        y = torch.tensor([classes.index(it["attributes"]["objects"][0][args.task]) for it in items])
        return lit._pixels(x), y

    print(f"{args.preset}: image tower {sum(p.numel() for p in tower.parameters()):,} parameters")
    t0 = time.perf_counter()
    for step in range(args.steps):
        x, y = batch(train, range(step * args.batch, (step + 1) * args.batch))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            feats = tower(x)
        loss = F.cross_entropy(head(feats.float()), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step} loss {loss.item():.3f} {time.perf_counter() - t0:.0f} s", flush=True)
    train_s = time.perf_counter() - t0
    tower.eval()
    with torch.no_grad():
        x, y = batch(test, range(len(test)))
        acc = (head(tower(x).float()).argmax(1) == y).float().mean().item()
    print(f"{args.preset} {args.task}: test accuracy {acc:.3f} after {args.steps} steps, {train_s:.0f} s of training")


if __name__ == "__main__":
    main()
