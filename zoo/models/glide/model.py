"""GLIDE (Nichol et al., 2021): a text-conditional ADM U-Net with a transformer text encoder (plain PyTorch).

The network is two parts glued by two paths (PAPER_FACTS "GLIDE"):

- ``TextEncoder``: token + learned position embeddings -> the generic pre-LN ``zoo.nn.transformer.Transformer``
  (with its final LayerNorm). **Causal**, as GLIDE's text transformer (``GlideConfig.text_causal``; ``False`` gives a
  bidirectional encoder). It never uses a key padding mask: padding positions are ordinary inputs (the ``pad_id``
  embedding plus their position embedding, GLIDE's learned padding), so no attention row can ever be empty, not even
  for the all-pad empty caption.
- Path 1, the final token replaces ADM's class embedding: the encoder output at the LAST position (``[:, -1]``, as in
  openai/glide-text2im; with right-padding and a causal encoder it has seen the whole caption) is projected
  (``text_proj``, width -> 4 x U-Net width) and ADDED to the timestep embedding (``UNet.forward(emb=...)``).
- Path 2, the token outputs are the U-Net's ``context``: every attention block projects them to extra keys/values
  (the U-Net owns those per-block projections, ``AttentionBlock.context_kv``). Padded positions are masked there
  (``context_mask = tokens != pad_id``); the image's own keys are never masked, so no row is empty.

Not GLIDE's, for short CPU budgets: the caption encoder can start from a CLIP's text tower (``TextEncoder.load_clip_text``,
``clip_text_state_dict``): the same pre-LN causal transformer, so the copy computes exactly CLIP's per-token encodings;
with ``text_pool="argmax"`` path 1 reads the end-of-text token, where CLIP pools (GlideLit's ``text_init``).

The null condition (classifier-free guidance) is GLIDE's empty sequence: ``text_len`` pads, i.e. ``null_tokens``.
``forward(x_t, t, None)`` is exactly ``forward(x_t, t, null_tokens(B))``. With all pads the model sees only the pad
and position embeddings through path 1 (path 2 is fully masked).

Output: learned sigma (Improved DDPM), 2C channels = [eps ; v]; the process (``zoo.diffusion``) interprets them.

Inpainting (``GlideConfig.inpaint``, GLIDE's inpainting fine-tune): C + 1 extra input channels -- the masked image
(C, the known pixels, zeros elsewhere) and the mask (1, **1 = known**) -- concatenated to x_t before the U-Net's first
conv (in_channels 3 + 4 = 7). Without them (``cond`` has no ``"inpaint"``) the extra channels are zeros: nothing known,
plain text-to-image generation (as openai/glide-text2im's ``InpaintText2ImUNet``).

API::

    net = Glide(GLIDE_PRESETS["shapes"])
    out = net(x_t, t, text_tokens)                 # (B, 6, H, W)
    cond = net.encode_text(text_tokens)            # once per sampling run ...
    out = net.denoise(x_t, t, cond)                # ... then every step
    # inpainting (cfg.inpaint): the masked image + mask ride along in the conditioning
    cond["inpaint"] = net.inpaint_input(image, mask)   # (B, C + 1, H, W), mask 1 = known

References read (not copied): openai/glide-text2im ``text2im_model.py`` (final-token projection, xf_padding,
``encoder_kv``) and ``model_creation.py`` (layout numbers).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import torch
import torch.nn as nn

from zoo.models.presets import check_sizes, check_unet_sizes
from zoo.nn.transformer import Transformer
from zoo.nn.unet import UNet, UNetConfig

__all__ = [
    "GlideConfig",
    "GLIDE_PRESETS",
    "PRESETS",
    "TextEncoder",
    "Glide",
    "count_glide_params",
    "GLIDE_PAPER_TOTAL_PARAMS",
    "clip_text_state_dict",
]


def check_text_fields(cfg) -> None:
    """The text-tower fields ``TextEncoder`` reads (``text_width``, ``text_heads``, ``pad_id``, ``text_vocab``) are
    consistent; for any config that carries them (GLIDE's, the noised CLIP's)."""
    check_sizes(cfg, ("text_vocab", "text_len", "text_width", "text_heads"), type(cfg).__name__)
    if cfg.text_width % cfg.text_heads:
        raise ValueError(f"text_width {cfg.text_width} not divisible by text_heads {cfg.text_heads}")
    if not 0 <= cfg.pad_id < cfg.text_vocab:
        raise ValueError(f"pad_id {cfg.pad_id} outside the text vocabulary [0, {cfg.text_vocab})")


TEXT_POOLS = ("last", "argmax")


@dataclass(frozen=True)
class GlideConfig:
    """Shape of a GLIDE model: the U-Net fields (see ``zoo.nn.unet.UNetConfig``) and the text encoder's."""

    # ---- image / U-Net (ADM)
    image_size: int = 32  # training (and sampling) resolution
    in_channels: int = 3  # x_t channels (the inpainting variant's U-Net takes in_channels + 1 more)
    out_channels: int = 3  # C; the network outputs 2C with learn_sigma
    width: int = 64  # U-Net model channels
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (16, 8)  # pixels at image_size
    num_head_channels: int = 64
    dropout: float = 0.0
    resblock_updown: bool = False
    learn_sigma: bool = True  # GLIDE: learned-range variance + hybrid loss
    max_groups: int = 32
    coord_channels: bool = False  # not GLIDE's: pixel coordinates as 2 more U-Net inputs (zoo.nn.unet.UNetConfig)
    # ---- text encoder
    text_vocab: int = 1024  # >= the text tokenizer's vocab_size
    text_len: int = 32  # tokens per caption (>= the tokenizer's context_length)
    text_width: int = 256
    text_layers: int = 4
    text_heads: int = 4  # head_dim = text_width // text_heads
    text_causal: bool = True  # GLIDE's text transformer is causal
    pad_id: int = 0  # the tokenizer's pad id (trained BPE and CLIP BPE: 0)
    # path 1 reads the encoder's output at: "last" (GLIDE: the last position) | "argmax" (the highest token id, CLIP
    # BPE's end-of-text, where a CLIP text tower pools: for a text encoder initialised from a CLIP, load_clip_text)
    text_pool: str = "last"
    # ---- inpainting (GLIDE): masked image (in_channels) + mask (1) as extra U-Net input channels
    inpaint: bool = False

    def __post_init__(self):
        object.__setattr__(self, "channel_mult", tuple(self.channel_mult))
        object.__setattr__(self, "attention_resolutions", tuple(self.attention_resolutions))
        check_unet_sizes(self, type(self).__name__)
        check_sizes(self, ("out_channels", "num_head_channels"), type(self).__name__)
        check_text_fields(self)
        if self.text_pool not in TEXT_POOLS:
            raise ValueError(f"text_pool must be one of {TEXT_POOLS}, got {self.text_pool!r}")

    def unet_config(self) -> UNetConfig:
        return UNetConfig(
            in_channels=self.unet_in_channels,
            out_channels=self.out_channels,
            width=self.width,
            channel_mult=self.channel_mult,
            num_res_blocks=self.num_res_blocks,
            attention_resolutions=self.attention_resolutions,
            image_size=self.image_size,
            num_head_channels=self.num_head_channels,
            dropout=self.dropout,
            learn_sigma=self.learn_sigma,
            resblock_updown=self.resblock_updown,
            context_dim=self.text_width,
            max_groups=self.max_groups,
            coord_channels=self.coord_channels,
        )

    @property
    def unet_in_channels(self) -> int:
        """x_t's channels, plus the masked image's and the mask's for the inpainting model (3 -> 7)."""
        return self.in_channels + (self.in_channels + 1 if self.inpaint else 0)

    def to_dict(self) -> dict:
        return asdict(self)


# Presets. ``paper``: the 64 px base model of GLIDE. The U-Net is ``zoo.nn.unet.UNET_PRESETS["glide_paper"]`` (width
# 512 is our reconstruction of the 2.3B model; see zoo/nn/unet.py). The text transformer is the paper's 24 residual
# blocks of width 2048 (32 heads of 64); its vocabulary (GPT-2 BPE, 50257) and context (128 tokens) are the
# released glide-text2im defaults. Measured total: GLIDE_PAPER_TOTAL_PARAMS (paper: 3.5B = 2.3B + 1.2B).
GLIDE_PRESETS: dict[str, GlideConfig] = {
    # Tests: 16 px, two levels, attention at 16 and 8 px (6 attention blocks), a 2-layer 16-wide text encoder.
    "tiny": GlideConfig(
        image_size=16,
        width=8,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(16, 8),
        num_head_channels=8,
        max_groups=8,
        text_vocab=1024,
        text_len=32,
        text_width=16,
        text_layers=2,
        text_heads=2,
    ),
    # The shapes world on a CPU: 32 px, attention at 16 and 8, a 4-layer 256-wide text encoder over 48 tokens
    # (descriptive shapes captions under the 1024-token BPE: median 29 tokens with SOT/EOT, 90% <= 40, max 45; 32
    # would cut the third object off many 3-object captions).
    "shapes": GlideConfig(
        image_size=32,
        width=64,
        channel_mult=(1, 2, 2),
        num_res_blocks=2,
        attention_resolutions=(16, 8),
        num_head_channels=64,
        text_vocab=1024,
        text_len=48,
        text_width=256,
        text_layers=4,
        text_heads=4,
    ),
    "paper": GlideConfig(
        image_size=64,
        width=512,
        channel_mult=(1, 2, 3, 4),
        num_res_blocks=3,
        attention_resolutions=(32, 16, 8),
        num_head_channels=64,
        dropout=0.1,
        resblock_updown=True,
        text_vocab=50257,
        text_len=128,
        text_width=2048,
        text_layers=24,
        text_heads=32,
    ),
}
PRESETS = GLIDE_PRESETS  # the name zoo.models.presets.resolve_preset callers use

# Measured with count_glide_params("paper") on the meta device (tests/models/test_glide.py re-measures it):
# U-Net 2,238,164,486 (zoo.nn.unet.GLIDE_PAPER_PARAMS, context projections included) + text encoder
# 1,311,791,104 (24 blocks 1,208,598,528 + token embeddings 102,926,336 + positions 262,144 + final LN 4,096)
# + final-token projection 2048 -> 2048: 4,196,352. Total 3.554B against the paper's "3.5B" (2.3B + 1.2B: the
# paper's 1.2B matches the 24 blocks without the embeddings).
GLIDE_PAPER_TOTAL_PARAMS = 3_554_151_942


# ------------------------------------------------------------------------------------------------------ network
class TextEncoder(nn.Module):
    """tokens (B, L) -> (token outputs (B, L, width), final-token output (B, width)), both after the final LN."""

    def __init__(self, cfg: GlideConfig):
        super().__init__()
        self.cfg = cfg
        self.token_embedding = nn.Embedding(cfg.text_vocab, cfg.text_width)
        self.position_embedding = nn.Parameter(torch.empty(cfg.text_len, cfg.text_width))
        self.transformer = Transformer(
            cfg.text_width, cfg.text_layers, cfg.text_heads, cfg.text_width // cfg.text_heads, causal=cfg.text_causal
        )
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding, std=0.01)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, n = tokens.shape
        if n != self.cfg.text_len:
            raise ValueError(
                f"text tokens must be (B, text_len={self.cfg.text_len}), got {tuple(tokens.shape)} "
                f"(pad with Glide.pad_text)"
            )
        x = self.token_embedding(tokens) + self.position_embedding  # (B, L, W)
        # No key padding mask: pads are learned inputs, so every attention row keeps at least itself.
        h = self.transformer(x)  # (B, L, W), final LayerNorm applied
        if (
            getattr(self.cfg, "text_pool", "last") == "argmax"
        ):  # CLIP's pooling (the noised CLIP's cfg has no field): the end-of-text token has the highest id
            return h, h[torch.arange(b, device=h.device), tokens.argmax(dim=-1)]
        return h, h[:, -1]

    def load_clip_text(self, clip_model: nn.Module) -> None:
        """Copy an open_clip CLIP's text tower (token and position embeddings, blocks, ``ln_final``) into this
        encoder: the same pre-LN causal transformer, so the outputs equal ``text_token_encodings``' (tested).
        ``ValueError`` naming the field to change when the shapes differ."""
        self.load_state_dict(clip_text_state_dict(clip_model, self.cfg))


class Glide(nn.Module):
    """GLIDE: ``forward(x_t, t, text_tokens=None) -> (B, 2C, H, W)`` (None = the empty caption)."""

    def __init__(self, cfg: GlideConfig):
        super().__init__()
        self.cfg = cfg
        self.text = TextEncoder(cfg)
        self.unet = UNet(cfg.unet_config())
        # final token -> added to the timestep embedding (replaces ADM's class embedding)
        self.text_proj = nn.Linear(cfg.text_width, self.unet.time_embed_dim)

    # ---- text
    def null_tokens(self, batch: int, device=None) -> torch.Tensor:
        """The empty caption (GLIDE's empty sequence): (batch, text_len) of pad_id."""
        return torch.full((batch, self.cfg.text_len), self.cfg.pad_id, dtype=torch.long, device=device)

    def pad_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L <= text_len) -> (B, text_len), right-padded with pad_id."""
        n = self.cfg.text_len
        if tokens.shape[1] > n:
            raise ValueError(
                f"text has {tokens.shape[1]} tokens; the model takes {n} (data.tokenizer.context_length "
                f"<= model.net.text_len)"
            )
        if tokens.shape[1] < n:
            tokens = torch.nn.functional.pad(tokens, (0, n - tokens.shape[1]), value=self.cfg.pad_id)
        return tokens.long()

    def encode_text(
        self, tokens: Optional[torch.Tensor], batch: Optional[int] = None, device=None
    ) -> dict[str, torch.Tensor]:
        """The U-Net's conditioning for text tokens (B, <= text_len), or for the empty caption when ``tokens`` is
        None (then ``batch`` gives B): {"context" (B, L, W), "context_mask" (B, L) bool, "emb" (B, 4 x width)}."""
        if tokens is None:
            if batch is None:
                raise ValueError("encode_text(None) needs batch=")
            tokens = self.null_tokens(batch, device or self.text_proj.weight.device)
        tokens = self.pad_text(tokens)
        context, last = self.text(tokens)
        return {"context": context, "context_mask": tokens != self.cfg.pad_id, "emb": self.text_proj(last)}

    # ---- inpainting inputs
    @staticmethod
    def inpaint_input(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The inpainting model's extra channels: [image * mask ; mask] (B, C + 1, H, W) for an image (B, C, H, W)
        in [-1, 1] and a mask (B or 1, 1, H, W), **1 = known** (soft values allowed). Erased pixels read 0."""
        mask = mask.to(image.dtype)
        if mask.dim() != 4 or mask.shape[1] != 1:
            raise ValueError(f"inpaint mask must be (B, 1, H, W), got {tuple(mask.shape)}")
        mask = mask.expand(image.shape[0], 1, *image.shape[-2:])
        return torch.cat([image * mask, mask], dim=1)

    def unet_input(self, x_t: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        """x_t, or [x_t ; cond["inpaint"]] for the inpainting model (zeros when absent: nothing known)."""
        if not self.cfg.inpaint:
            if cond.get("inpaint") is not None:
                raise ValueError(
                    "this GLIDE model has no inpainting channels (train with model=glide_inpaint); "
                    "inpaint a plain model through the samplers' known-region hook instead"
                )
            return x_t
        extra = cond.get("inpaint")
        if extra is None:
            extra = x_t.new_zeros(x_t.shape[0], self.cfg.in_channels + 1, *x_t.shape[-2:])
        return torch.cat([x_t, extra.to(x_t.dtype)], dim=1)  # (B, 2C + 1, H, W)

    # ---- denoiser
    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        """The U-Net on x_t (B, C, H, W) at original timesteps t (B,) under ``encode_text``'s conditioning (plus
        ``cond["inpaint"]``, ``inpaint_input``'s channels, for the inpainting model)."""
        return self.unet(
            self.unet_input(x_t, cond), t, context=cond["context"], context_mask=cond["context_mask"], emb=cond["emb"]
        )

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        text_tokens: Optional[torch.Tensor] = None,
        inpaint_image: Optional[torch.Tensor] = None,
        inpaint_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """x_t (B, C, H, W), t (B,) timesteps, text_tokens (B, <= text_len) or None (the empty caption)
        -> (B, 2C, H, W) = [eps ; v] with learn_sigma. Inpainting model: ``inpaint_image`` (B, C, H, W) and
        ``inpaint_mask`` (B, 1, H, W), 1 = known (both None: nothing known)."""
        cond = self.encode_text(text_tokens, batch=x_t.shape[0], device=x_t.device)
        if (inpaint_image is None) != (inpaint_mask is None):
            raise ValueError("give both inpaint_image and inpaint_mask, or neither")
        if inpaint_image is not None:
            cond["inpaint"] = self.inpaint_input(inpaint_image, inpaint_mask)
        return self.denoise(x_t, t, cond)


def clip_text_state_dict(clip_model: nn.Module, cfg: GlideConfig) -> dict[str, torch.Tensor]:
    """``TextEncoder``'s state dict made from an open_clip model's text tower (``open_clip.CLIP``, or the ``.text`` of
    a ``CustomTextCLIP``): token_embedding -> token_embedding, positional_embedding -> position_embedding, each
    residual block's ln_1 / attn.in_proj (q, k, v stacked as our qkv) / attn.out_proj / ln_2 / mlp.c_fc / mlp.c_proj
    -> ln1 / attn.qkv / attn.proj / ln2 / mlp.0 / mlp.2, ln_final -> transformer.ln_f. The tower must be what
    ``TextEncoder`` computes: the config's vocabulary, context, width, depth and heads, causal iff ``text_causal``,
    exact GELU, MLP ratio 4, no layer scale. The text projection is not copied (GLIDE projects its own way)."""
    tower = clip_model.text if hasattr(getattr(clip_model, "text", None), "transformer") else clip_model
    need = ("token_embedding", "positional_embedding", "transformer", "ln_final")
    if not all(hasattr(tower, a) for a in need) or not hasattr(tower.transformer, "resblocks"):
        raise ValueError(f"{type(clip_model).__name__} has no open_clip text tower ({', '.join(need)})")
    blocks = list(tower.transformer.resblocks)
    vocab, width = tower.token_embedding.weight.shape
    ctx = tower.positional_embedding.shape[0]
    heads = blocks[0].attn.num_heads if blocks else cfg.text_heads
    fixes = []
    for field, theirs, ours in (
        ("text_vocab", vocab, cfg.text_vocab),
        ("text_len", ctx, cfg.text_len),
        ("text_width", width, cfg.text_width),
        ("text_layers", len(blocks), cfg.text_layers),
        ("text_heads", heads, cfg.text_heads),
    ):
        if theirs != ours:
            fixes.append(f"model.net.{field}={theirs} (is {ours})")
    causal = getattr(tower, "attn_mask", None) is not None
    if causal != cfg.text_causal:
        fixes.append(f"model.net.text_causal={str(causal).lower()}")
    if fixes:
        raise ValueError(f"the CLIP's text tower does not fit this text encoder (fix: {' '.join(fixes)})")
    for i, blk in enumerate(blocks):
        act = blk.mlp.gelu if hasattr(blk.mlp, "gelu") else None
        if type(act) is not nn.GELU or act.approximate != "none":
            raise ValueError(f"CLIP text block {i} uses {type(act).__name__}, not exact GELU: it cannot be copied")
        if not isinstance(blk.ls_1, nn.Identity) or not isinstance(blk.ls_2, nn.Identity):
            raise ValueError(f"CLIP text block {i} has layer scale: it cannot be copied")
        if blk.mlp.c_fc.out_features != 4 * width:
            raise ValueError(f"CLIP text block {i} has MLP width {blk.mlp.c_fc.out_features}, not 4 x {width}")
    sd = {"token_embedding.weight": tower.token_embedding.weight, "position_embedding": tower.positional_embedding}
    for i, blk in enumerate(blocks):
        p = f"transformer.blocks.{i}."
        sd |= {
            p + "ln1.weight": blk.ln_1.weight,
            p + "ln1.bias": blk.ln_1.bias,
            p + "attn.qkv.weight": blk.attn.in_proj_weight,
            p + "attn.qkv.bias": blk.attn.in_proj_bias,
            p + "attn.proj.weight": blk.attn.out_proj.weight,
            p + "attn.proj.bias": blk.attn.out_proj.bias,
            p + "ln2.weight": blk.ln_2.weight,
            p + "ln2.bias": blk.ln_2.bias,
            p + "mlp.0.weight": blk.mlp.c_fc.weight,
            p + "mlp.0.bias": blk.mlp.c_fc.bias,
            p + "mlp.2.weight": blk.mlp.c_proj.weight,
            p + "mlp.2.bias": blk.mlp.c_proj.bias,
        }
    sd |= {"transformer.ln_f.weight": tower.ln_final.weight, "transformer.ln_f.bias": tower.ln_final.bias}
    return {k: v.detach().float().clone() for k, v in sd.items()}


def count_glide_params(cfg: GlideConfig | str) -> int:
    """Parameters of a GLIDE model (a config or a preset name), built on the meta device (no memory)."""
    if isinstance(cfg, str):
        cfg = GLIDE_PRESETS[cfg]
    with torch.device("meta"):
        net = Glide(cfg)
    return sum(p.numel() for p in net.parameters())
