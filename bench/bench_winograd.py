"""Could our own Winograd convolutions (torch ops: tile transforms + batched matmuls) beat oneDNN where NNPACK
does not help? The question behind issue #15 on AVX2-only CPUs (fp32 is the only precision there).

    OMP_NUM_THREADS=1 python bench/bench_winograd.py [--reps 10]

Context: with ``conv_backend=auto`` the shapes U-Net's training step (batch 16, 32 px) still spends ~44% of its time
in oneDNN's ``convolution_backward``: the weight gradients of every 3x3 convolution (NNPACK has none) and the whole
backward of the 8 px level (where NNPACK's 8x8-tile Winograd is behind oneDNN). No torch kernel computes a Winograd
weight gradient. This script measures one written with torch ops, F(m x m, 3 x 3) with m = 2 (4x4 tiles,
2.25x fewer multiplies) or m = 4 (6x6 tiles, 4x fewer; Lavin & Gray's points 0, ±1, ±2, ∞):

    dW = G^T [ sum over tiles of (A dY A^T) ⊙ (B^T d B) ] G      (per pair of channels; d = input tile, dY = its
                                                                    output-gradient tile)

as one batched matmul over the a x a transform positions, ``(A dY A^T)`` (O, P) @ ``(B^T d B)`` (P, C) with P =
batch x tiles, the transforms as matmuls with Kronecker products. Also the forward, ``A^T [ (G g G^T) ⊙ (B^T d B) ] A``,
the same way. Each row: ms per call, best of ``--reps``, CPU-time clock; the error against float64 (relative
Frobenius norm). Prints figures, asserts nothing. The zoo does not use these torch-op kernels: their transforms
were the bottleneck, so zoo/nn/winograd.py does the transforms in C (``bench/bench_conv_backends.py`` measures those).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zoo.nn.winograd import _G  # noqa: E402
from zoo.precision import describe_cpu  # noqa: E402


def winograd_matrices(m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B^T (a, a), G (a, 3), A^T (m, a)) of F(m, 3), a = m + 2, float64."""
    if m == 2:
        bt = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
        g = [[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]]
        at = [[1, 1, 1, 0], [0, 1, -1, -1]]
    elif m == 4:
        bt = [
            [4, 0, -5, 0, 1, 0],
            [0, -4, -4, 1, 1, 0],
            [0, 4, -4, -1, 1, 0],
            [0, -2, -1, 2, 1, 0],
            [0, 2, -1, -2, 1, 0],
            [0, 4, 0, -5, 0, 1],
        ]
        g = _G.tolist()  # the zoo's own kernels' G (zoo/nn/winograd.py)
        at = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]
    else:
        raise ValueError(f"m = 2 or 4, got {m}")
    f64 = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return f64(bt), f64(g), f64(at)


class Winograd:
    """F(m, 3) transforms of one convolution shape (stride 1, padding 1; H and W divisible by m)."""

    def __init__(self, m: int):
        bt, g, at = winograd_matrices(m)
        self.m, self.a = m, m + 2
        self.kb = torch.kron(bt, bt).float()  # vec(B^T d B) = kb @ vec(d)
        self.ka = torch.kron(at.T, at.T).float()  # vec(A dY A^T) = ka @ vec(dY)   (a^2, m^2)
        self.kat = torch.kron(at, at).float()  # vec(A^T M A) = kat @ vec(M)   (m^2, a^2)
        self.kg = torch.kron(g, g).float()  # vec(G w G^T) = kg @ vec(w)     (a^2, 9)

    def input_tiles(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, C, H, W) -> B^T d B per transform position: (a^2, C, P), P = N x tiles."""
        n, c, h, w = x.shape
        a, m = self.a, self.m
        d = F.pad(x, (1, 1, 1, 1)).unfold(2, a, m).unfold(3, a, m)  # (N, C, H/m, W/m, a, a)
        d = d.permute(4, 5, 1, 0, 2, 3).reshape(a * a, c * n * (h // m) * (w // m))
        return (self.kb @ d).view(a * a, c, -1)

    def grad_tiles(self, dy: torch.Tensor) -> torch.Tensor:
        """dY (N, O, H, W) -> A dY A^T per transform position: (a^2, O, P)."""
        n, o, h, w = dy.shape
        m = self.m
        t = dy.reshape(n, o, h // m, m, w // m, m).permute(3, 5, 1, 0, 2, 4).reshape(m * m, -1)
        return (self.ka @ t).view(self.a**2, o, -1)

    def weight_grad(self, x: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
        """dL/dw (O, C, 3, 3) of conv2d(x, w, padding=1) given dY."""
        o, c = dy.shape[1], x.shape[1]
        du = torch.bmm(self.grad_tiles(dy), self.input_tiles(x).transpose(1, 2))  # (a^2, O, C)
        return (self.kg.T @ du.view(self.a**2, o * c)).view(3, 3, o, c).permute(2, 3, 0, 1)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """conv2d(x, w, padding=1) (N, O, H, W)."""
        n, c, h, wd = x.shape
        o, m = w.shape[0], self.m
        u = (self.kg @ w.permute(2, 3, 0, 1).reshape(9, o * c)).view(self.a**2, o, c)  # G w G^T
        y = torch.bmm(u, self.input_tiles(x))  # (a^2, O, P)
        y = (self.kat @ y.view(self.a**2, -1)).view(m, m, o, n, h // m, wd // m)
        return y.permute(3, 2, 4, 0, 5, 1).reshape(n, o, h, wd)


def onednn_weight_grad(x, dy, w):
    return torch.ops.aten.convolution_backward(
        dy, x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [False, True, False]
    )[1]


def best_ms(fn, reps: int) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best * 1e3


def rel_err(got: torch.Tensor, want64: torch.Tensor) -> float:
    return float((got.double() - want64).norm() / want64.norm())


# (batch, in, out, size): the shapes U-Net's 3x3 convolutions at batch 16, and two single large images
SHAPES = [
    (16, 64, 64, 32),
    (16, 128, 64, 32),
    (16, 128, 128, 32),
    (16, 192, 64, 32),
    (16, 128, 128, 16),
    (16, 256, 128, 16),
    (16, 256, 256, 8),
    (16, 512, 256, 8),
    (1, 64, 64, 256),
    (1, 32, 32, 512),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(describe_cpu())
    print(f"torch {torch.__version__}; threads {torch.get_num_threads()}; ms per call, best of {args.reps}")
    kernels = {m: Winograd(m) for m in (2, 4)}
    print(
        f"{'N':>3} {'C':>4} {'O':>4} {'px':>4} | weight grad: oneDNN    F(2,3)    F(4,3) | forward: oneDNN    "
        f"F(2,3)    F(4,3) | rel. error of the weight grad: oneDNN / F(2,3) / F(4,3)"
    )
    for n, c, o, size in SHAPES:
        torch.manual_seed(0)
        x, dy, w = torch.randn(n, c, size, size), torch.randn(n, o, size, size), torch.randn(o, c, 3, 3) * 0.05
        want = onednn_weight_grad(x.double(), dy.double(), w.double())
        wg = {"oneDNN": best_ms(lambda: onednn_weight_grad(x, dy, w), args.reps)}
        fw = {"oneDNN": best_ms(lambda: F.conv2d(x, w, padding=1), args.reps)}
        err = {"oneDNN": rel_err(onednn_weight_grad(x, dy, w), want)}
        for m, k in kernels.items():
            wg[m] = best_ms(lambda: k.weight_grad(x, dy), args.reps)
            fw[m] = best_ms(lambda: k.forward(x, w), args.reps)
            err[m] = rel_err(k.weight_grad(x, dy), want)
        print(
            f"{n:>3} {c:>4} {o:>4} {size:>4} | {wg['oneDNN']:18.1f} {wg[2]:9.1f} {wg[4]:9.1f} | {fw['oneDNN']:14.1f} "
            f"{fw[2]:9.1f} {fw[4]:9.1f} | {err['oneDNN']:.0e} / {err[2]:.0e} / {err[4]:.0e}",
            flush=True,
        )
    print(
        "\nReading: the batched matmuls alone run at oneDNN's rate; what decides is the tile transforms (unfold +"
        " permute copies and small Kronecker matmuls, memory-bound in torch ops), which grow with channels x batch x"
        " tiles. A Winograd weight gradient only pays where they are small against the matmul."
    )


if __name__ == "__main__":
    main()
