"""The vision tower of the paper's vision-language variant (docs/paper.md, "Vision input"): a ViT
in CLIP's form and a two-layer projector into the language model's width.

CLIP ViT-L/14 at 336 px: 14x14 patches embedded by a bias-free convolution, a class token and
learned positions, a LayerNorm before the blocks, then pre-norm blocks of multi-head attention and
a quick-GELU MLP, all with biases. A LLaVA-style model reads the penultimate block's states without
the class token (576 = 24 x 24 image tokens), so the preset stacks 23 of CLIP's 24 blocks: the
24th is never read and an export would drop it. The projector (Linear -> GELU -> Linear) maps them
to the language model's hidden width; the tokens then go into the encoder (encoder-decoder) or
before the prompt (decoder-only): models/families.py.

The image size is fixed per export (the positions are learned for one grid): a tower built for
another size than its native one resamples its position table to that grid at build time
(bicubic, as CLIP's interpolate_pos_encoding does), never in the timed path.
"""

from __future__ import annotations

from slmbench.models.config import VisionConfig

__all__ = ["VisionConfig", "build_tower", "fixed_image"]


def build_tower(cfg: VisionConfig, hidden: int):
    """The tower and projector as one torch module (imports torch): pixels [B, 3, S, S] ->
    image embeddings [B, (S / patch)^2, hidden], S the native size until `set_image_size`."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm1 = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
            self.qkv = nn.Linear(cfg.width, 3 * cfg.width)
            self.out = nn.Linear(cfg.width, cfg.width)
            self.norm2 = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
            self.fc1 = nn.Linear(cfg.width, cfg.mlp)
            self.fc2 = nn.Linear(cfg.mlp, cfg.width)

        def forward(self, x):
            b, t, w = x.shape
            head = w // cfg.heads
            q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, cfg.heads, head).permute(2, 0, 3, 1, 4)
            attn = F.scaled_dot_product_attention(q, k, v)  # bidirectional, no mask: every patch is real
            x = x + self.out(attn.transpose(1, 2).reshape(b, t, w))
            h = self.fc1(self.norm2(x))
            return x + self.fc2(h * torch.sigmoid(1.702 * h))  # CLIP's quick GELU

    class Tower(nn.Module):
        def __init__(self):
            super().__init__()
            self.patch_embed = nn.Conv2d(3, cfg.width, cfg.patch, stride=cfg.patch, bias=False)
            self.class_token = nn.Parameter(torch.zeros(cfg.width))
            self.positions = nn.Parameter(torch.zeros(cfg.image_tokens() + 1, cfg.width))
            self.pre_norm = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
            self.blocks = nn.ModuleList(Block() for _ in range(cfg.layers))
            self.proj_in = nn.Linear(cfg.width, hidden)
            self.proj_out = nn.Linear(hidden, hidden)

        def set_image_size(self, size: int):
            """Take `size`-pixel images from now on: the position table resampled to that grid, a
            constant of the graph (computed here once, never per image)."""
            cfg.check_image_size(size)
            native, side = cfg.image_size // cfg.patch, size // cfg.patch
            with torch.no_grad():
                table = self.positions
                if side != native:
                    grid = table[1:].reshape(1, native, native, -1).permute(0, 3, 1, 2)
                    grid = F.interpolate(grid, size=(side, side), mode="bicubic", align_corners=False)
                    table = torch.cat([table[:1], grid.permute(0, 2, 3, 1).reshape(side * side, -1)])
            self.image_size = size
            self.register_buffer("_positions", table.detach().clone(), persistent=False)
            return self

        def forward(self, pixels):
            x = self.patch_embed(pixels).flatten(2).transpose(1, 2)  # [B, tokens, width]
            cls = self.class_token.expand(x.shape[0], 1, -1)
            x = self.pre_norm(torch.cat([cls, x], 1) + self._positions)
            for block in self.blocks:
                x = block(x)
            return self.proj_out(F.gelu(self.proj_in(x[:, 1:])))

    tower = Tower()
    with torch.no_grad():
        for p in tower.parameters():
            p.normal_(0.0, 0.02)
        tower.pre_norm.weight.fill_(1.0)
        for block in tower.blocks:
            block.norm1.weight.fill_(1.0)
            block.norm2.weight.fill_(1.0)
    return tower.set_image_size(cfg.image_size)


def fixed_image(batch: int, size: int, seed: int = 0):
    """Pixels of a fixed-seed image (numpy float32 [batch, 3, size, size], CLIP-normalised values):
    latency does not depend on what the picture shows."""
    import numpy as np

    rng = np.random.default_rng(seed + 7919)
    return rng.standard_normal((batch, 3, size, size), dtype=np.float32)
