"""Autoregressive image-token sampling for ``zoo.models.dalle.model.DalleTransformer`` (torch only; the model is
duck-typed: ``cfg``, ``new_cache``, ``next_image_logits``).

``sample_image_tokens`` draws every image token with the Gumbel-max trick on noise drawn from the caller's
``torch.Generator``: at each step we draw ``u ~ U(0, 1)`` of shape (B, image_vocab) (always float32, same shape and
order in every code path) and take ``argmax(filtered_logits / temperature - log(-log u))``, which is an exact sample
from softmax(filtered_logits / temperature). Because the randomness does not depend on the logits, the cached and
uncached paths consume identical random numbers, and they pick the same token unless their logits differ by more
than the gap between the two best perturbed scores — with float64 models that never happens in practice, and the
tests check token-for-token equality. (``torch.multinomial`` would also be seeded identically, but its
inverse-CDF draw is more sensitive to last-bit differences in the probabilities.)

Classifier-free guidance: the conditional and unconditional (null text = all pads, per-position pad embeddings)
streams run as one batch of 2B; logits = uncond + s * (cond - uncond), computed with ``torch.lerp`` so that s = 1
returns the conditional logits bit for bit. Priming: the first P raster tokens (e.g. the top r rows) are given and
kept; the rest are sampled. The uncached path recomputes the whole prefix at every step (reference / benchmark).
"""

from __future__ import annotations

from typing import Optional

import torch

from zoo.nn.guidance import guide


def check_sampling(
    temperature: float = 1.0, top_k: Optional[int] = None, top_p: Optional[float] = None, prefix: str = ""
) -> None:
    """The token-sampling options, refused before any token is drawn (``prefix``: how the caller spells them, e.g.
    ``generator.``). The sampler read what it did not understand as something else without a word: a negative
    temperature or top_p as greedy decoding, a negative top_k as no filter, a fractional top_k rounded inside
    torch.topk, a top_p above 1 (90 for 90%) as no filter. 0 stays meaningful: temperature 0 is greedy, top_k 0 no
    filter, and a top_k above the vocabulary keeps every token. Used by DALL·E (model, pipeline) and the AR prior."""
    from zoo.errors import check_number, check_whole

    # zoo.errors' one rule and wording: a word (temperature=abc) was float()'s bare "could not convert string to
    # float", inf / NaN for top_k int()'s OverflowError / ValueError, each naming no option
    check_number(f"{prefix}temperature", temperature, 0, fix=1.0, why="0 is greedy")
    # top_k=64.0 is refused as every count refuses a whole float (zoo.kinds does for model.grid_top_k; before, only
    # generator.top_k took it, as 64); the fix names the int
    whole = isinstance(top_k, float) and top_k.is_integer() and top_k >= 0
    why = "the number of best tokens kept; 0 or null: no filter"
    check_whole(f"{prefix}top_k", top_k, 0, int(top_k) if whole else "null", none_ok=True, why=why)
    why = "the probability mass kept; 1 or null: no filter"
    fix = f"null, or {prefix}temperature=0 for greedy decoding"
    check_number(f"{prefix}top_p", top_p, 0, 1, low_open=True, fix=fix, none_ok=True, why=why)


def filter_logits(logits: torch.Tensor, top_k: Optional[int] = None, top_p: Optional[float] = None) -> torch.Tensor:
    """Set logits outside the top-k and/or the nucleus of mass top_p to -inf (always keeps the best token)."""
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, int(top_k), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        # the mass in >= fp32: a bf16 cumsum over thousands of tokens rounds, and the kept mass fell short of top_p
        probs = sorted_logits.softmax(-1, dtype=torch.promote_types(logits.dtype, torch.float32))
        mass_before = probs.cumsum(-1) - probs  # probability of the strictly better tokens
        drop_sorted = mass_before >= top_p
        drop_sorted[..., 0] = False  # the best token is always kept (top_p <= 0 dropped every token: all -inf)
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def gumbel_pick(logits: torch.Tensor, temperature: float, generator: Optional[torch.Generator]) -> torch.Tensor:
    """Sample (B,) from softmax(logits / temperature) with Gumbel-max; temperature <= 0 means greedy.
    The noise is drawn even when greedy so that the generator advances identically. ``generator`` may also be an
    object with ``rand(shape, device=, dtype=)`` (``zoo.diffusion.noise.RowGenerators``: one stream per group of
    rows, batched candidates)."""
    if hasattr(generator, "rand"):
        u = generator.rand(logits.shape, device=logits.device, dtype=torch.float32)
    else:
        u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=torch.float32)
    if temperature <= 0:
        return logits.argmax(-1)
    g = -torch.log(-torch.log(u.clamp(min=torch.finfo(torch.float32).tiny)))
    return (logits / temperature + g.to(logits.dtype)).argmax(-1)


@torch.no_grad()
def sample_image_tokens(
    model,
    text_tokens: torch.Tensor,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    guidance_scale: float = 1.0,
    null_text_tokens: Optional[torch.Tensor] = None,
    prime_tokens: Optional[torch.Tensor] = None,
    use_cache: bool = True,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Sample image tokens (B, h, w) for text_tokens (B, T).

    guidance_scale != 1 or a given ``null_text_tokens`` ((T,) or (B, T); default all ``pad_id``) runs the
    unconditional stream alongside. ``prime_tokens``: (B, r, w) rows or (B, P) raster prefix, kept as given.
    """
    cfg = model.cfg
    if text_tokens.dim() != 2 or text_tokens.shape[1] != cfg.text_len:
        raise ValueError(
            f"text_tokens must be (B, {cfg.text_len}) (padded to the model's text_len), got shape "
            f"{tuple(text_tokens.shape)}"
        )
    b, t, n = text_tokens.shape[0], cfg.text_len, cfg.image_len
    device = text_tokens.device
    out = torch.zeros(b, n, dtype=torch.long, device=device)
    n_prime = 0
    if prime_tokens is not None:
        ps = tuple(prime_tokens.shape)
        if prime_tokens.dim() not in (2, 3) or ps[0] != b or (prime_tokens.dim() == 3 and ps[2] != cfg.grid_w):
            raise ValueError(
                f"prime_tokens must be ({b}, r, {cfg.grid_w}) token rows or a ({b}, P) raster prefix (one per "
                f"caption of the batch, grid {cfg.grid_h}x{cfg.grid_w}), got shape {ps}"
            )
        prime = prime_tokens.reshape(b, -1).to(device)
        n_prime = prime.shape[1]
        if n_prime and (prime.min() < 0 or prime.max() >= cfg.image_vocab):
            raise ValueError(
                f"prime_tokens hold codes {int(prime.min())}..{int(prime.max())}; the model's image_vocab is "
                f"{cfg.image_vocab}"
            )
        if n_prime >= n:
            raise ValueError(f"prime_tokens has {n_prime} tokens; the grid has only {n}")
        out[:, :n_prime] = prime

    guided = guidance_scale != 1.0 or null_text_tokens is not None
    text = text_tokens
    if guided:
        null = null_text_tokens if null_text_tokens is not None else torch.full((t,), cfg.pad_id)
        if tuple(null.shape) not in ((t,), (1, t), (b, t)):
            raise ValueError(
                f"null_text_tokens must be ({t},) or ({b}, {t}) (text_len {t}, one per caption), got shape "
                f"{tuple(null.shape)}"
            )
        null = null.to(device).expand(b, t)
        text = torch.cat([text_tokens, null], 0)  # (2B, T): [cond ; uncond]
    streams = 2 if guided else 1

    def pick(logits: torch.Tensor) -> torch.Tensor:  # logits (streams * B, V) -> tokens (B,)
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        if guided:
            cond, uncond = logits.chunk(2)
            logits = guide(uncond, cond, guidance_scale)  # uncond + s (cond - uncond); exact cond at s = 1
        logits = filter_logits(logits / temperature if temperature > 0 else logits, top_k, top_p)
        return gumbel_pick(logits, 1.0 if temperature > 0 else 0.0, generator)

    was_training = model.training
    model.eval()
    try:
        if use_cache:
            cache = model.new_cache(streams * b, device=device)
            logits = model.next_image_logits(text=text, image=out[:, :n_prime].repeat(streams, 1), cache=cache)
            for p in range(n_prime, n):
                out[:, p] = pick(logits)
                if p + 1 < n:  # feed token p at position T + p; its output predicts token p + 1
                    logits = model.next_image_logits(
                        image=out[:, p : p + 1].repeat(streams, 1), image_start=p, cache=cache, start_pos=t + p
                    )
        else:
            for p in range(n_prime, n):
                out[:, p] = pick(model.next_image_logits(text=text, image=out[:, :p].repeat(streams, 1)))
    finally:
        model.train(was_training)
    return out.view(b, cfg.grid_h, cfg.grid_w)
