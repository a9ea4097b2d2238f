"""DALL·E 1 attention masks over one stream [text (T tokens) ; image (h*w tokens in raster order)].

Boolean masks, ``True`` = query i may attend key j (the convention of ``F.scaled_dot_product_attention``).
Indices are *sequence positions of the input stream*: position i < T holds text token i, position T + p holds image
token p (p = row * w + col). Every mask is causal (j <= i) and:

- text queries attend causally among text and never to image keys;
- image queries attend to every text key (pads included: each text position has its own learned pad embedding);
- image-to-image attention follows one of four patterns (q, k = raster indices of query and key image tokens):

  ``full``    0 <= q - k                          (dense causal)
  ``row``     0 <= q - k <= w                     the paper's row attention: the w + 1 most recent image tokens
                                                  *in raster order*, self included, so the oldest key of query q is
                                                  the token in the same column of the previous row (paper Fig. 11a:
                                                  4x4 grid, extent 5, "the last token attended to is the one in the
                                                  same column of the previous row"). Equivalently, because the input
                                                  at position q predicts image token q + 1, the predicted token is
                                                  conditioned on the w + 1 image tokens right before it. It is NOT
                                                  restricted to the query's own row (lucidrains/DALLE-pytorch's
                                                  ``axial_row`` is; that departs from the paper).
  ``column``  k_col == q_col and k_row <= q_row   same column, at or above the query (self included). The paper
                                                  implements column attention as row attention on the *transposed*
                                                  grid (for GPU efficiency); transposed row attention would also
                                                  reach a few tokens of the previous column, some of which come
                                                  *after* the query in raster order, so we use the simple
                                                  same-column causal definition instead.
  ``conv``    |dr| <= k//2, |dc| <= k//2, k <= q   causal k x k neighbourhood (paper: last layer, 11 x 11).

``layer_pattern`` gives the per-layer kinds: the paper uses column attention in layers i with (i - 2) mod 4 == 0 for
the 1-based layer index i (layers 2, 6, 10, ...), row attention otherwise, and convolutional attention in the last
layer. Written by hand: no maintained library offers the paper's masks. Torch only.
"""

from __future__ import annotations

import torch

MASK_KINDS = ("full", "row", "column", "conv")
PATTERNS = ("paper", "full", "row", "column", "conv")


def image_image_mask(kind: str, h: int, w: int, conv_kernel: int = 11, device=None) -> torch.Tensor:
    """(h*w, h*w) bool: image query q (row) may attend image key k (column) under ``kind``."""
    if kind not in MASK_KINDS:
        raise ValueError(f"unknown mask kind {kind!r}; valid: {MASK_KINDS}")
    n = h * w
    idx = torch.arange(n, device=device)
    q, k = idx[:, None], idx[None, :]  # (n, 1), (1, n)
    causal = k <= q
    if kind == "full":
        return causal
    if kind == "row":
        return causal & (q - k <= w)
    qr, qc, kr, kc = q // w, q % w, k // w, k % w
    if kind == "column":
        return (kc == qc) & (kr <= qr)
    if conv_kernel < 1 or conv_kernel % 2 == 0:
        raise ValueError(f"conv_kernel must be a positive odd number, got {conv_kernel}")
    r = conv_kernel // 2
    return causal & ((qr - kr).abs() <= r) & ((qc - kc).abs() <= r)


def dalle_mask(kind: str, text_len: int, h: int, w: int, conv_kernel: int = 11, device=None) -> torch.Tensor:
    """(T + h*w, T + h*w) bool attention mask for the stream [text ; image]; True = may attend."""
    t, n = text_len, h * w
    mask = torch.zeros(t + n, t + n, dtype=torch.bool, device=device)
    mask[:t, :t] = torch.ones(t, t, dtype=torch.bool, device=device).tril()  # text -> text, causal
    mask[t:, :t] = True  # image -> all text
    mask[t:, t:] = image_image_mask(kind, h, w, conv_kernel, device=device)
    return mask


def layer_pattern(n_layers: int, kind: str = "paper") -> list[str]:
    """Per-layer mask kinds. ``paper``: with 1-based layer index i, ``column`` where (i - 2) % 4 == 0, ``row``
    otherwise, and ``conv`` in the last layer. ``full``/``row``/``column``/``conv``: that kind in every layer.
    A comma-separated list of kinds (e.g. ``full,row,column,conv``) is cycled over the layers (the way
    lucidrains/DALLE-pytorch's ``attn_types`` are)."""
    if "," in kind:
        cycle = [k.strip() for k in kind.split(",")]
        bad = [k for k in cycle if k not in MASK_KINDS]
        if bad:
            raise ValueError(f"unknown mask kind(s) {bad} in layer pattern {kind!r}; valid kinds: {MASK_KINDS}")
        return [cycle[i % len(cycle)] for i in range(n_layers)]
    if kind not in PATTERNS:
        raise ValueError(f"unknown layer pattern {kind!r}; valid: {PATTERNS} or a comma-separated list of kinds")
    if kind != "paper":
        return [kind] * n_layers
    kinds = ["column" if (i - 2) % 4 == 0 else "row" for i in range(1, n_layers + 1)]
    if n_layers:
        kinds[-1] = "conv"
    return kinds
