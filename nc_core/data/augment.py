"""Resident-tensor mini-batches with on-device, generator-driven crop+flip augmentation."""
from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

AUGMENTS = ("none", "crop_flip")


def crop_flip(x: Tensor, generator: torch.Generator | None = None, fill: Tensor | None = None) -> Tensor:
    """Random crop after padding (4 px at 32 px, scaled: max(1, round(4·H/32))) + horizontal flip.

    Vectorised as one gather; the draws come from ``generator`` (on its own device), so a saved
    generator state replays the same augmentations. The padding is ``fill`` (C,) per channel — a black
    pixel after normalisation, −mean/std, as torchvision's RandomCrop pads the seeds' PIL images before
    Normalize — or 0 without it.
    """
    b, _, h, w = x.shape  # (B, C, H, W)
    pad = max(1, round(4 * h / 32))
    gdev = generator.device if generator is not None else torch.device("cpu")
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=gdev).to(x.device)  # (B,)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=gdev).to(x.device)  # (B,)
    flip = (torch.rand(b, generator=generator, device=gdev) < 0.5).to(x.device)  # (B,)
    rows = dy[:, None] + torch.arange(h, device=x.device)  # (B, H)
    cols = dx[:, None] + torch.arange(w, device=x.device)  # (B, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)  # (B, W)
    padded = F.pad(x, (pad, pad, pad, pad))  # (B, C, H+2p, W+2p)
    if fill is not None:  # the border takes the fill exactly (no x − f + f rounding inside)
        f = fill.to(device=x.device, dtype=x.dtype)[None, :, None, None]  # (1, C, 1, 1)
        for border in (padded[:, :, :pad], padded[:, :, -pad:], padded[:, :, :, :pad], padded[:, :, :, -pad:]):
            border.copy_(f.expand_as(border))
    bi = torch.arange(b, device=x.device)[:, None, None, None]  # (B, 1, 1, 1)
    ci = torch.arange(x.shape[1], device=x.device)[None, :, None, None]  # (1, C, 1, 1)
    return padded[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]  # (B, C, H, W)


def batches(x: Tensor, y: Tensor, batch_size: int, *, shuffle: bool, generator: torch.Generator | None,
            augment: str = "none", drop_last: bool = False,
            fill: Tensor | None = None) -> Iterator[tuple[Tensor, Tensor]]:
    """Mini-batches of resident tensors; the permutation and augmentation draws use ``generator``;
    ``fill`` (C,): crop_flip's padding value. Images stored channels_last (CUDA convnet runs) come out
    channels_last too: a row gather and crop_flip's gather return NCHW, which cuDNN would convert back
    every step."""
    if augment not in AUGMENTS:
        raise ValueError(f"batches: unknown augment {augment!r}; valid: {', '.join(AUGMENTS)}")
    if augment == "crop_flip" and x.ndim != 4:
        raise ValueError(f"batches: crop_flip needs images (N, C, H, W), got shape {tuple(x.shape)}")
    if len(x) != len(y):
        raise ValueError(f"batches: x has {len(x)} rows but y has {len(y)}")
    n = len(x)
    nhwc = x.ndim == 4 and x.shape[1] > 1 and x.is_contiguous(memory_format=torch.channels_last) \
        and not x.is_contiguous()  # (N, C, H, W) stored as (N, H, W, C)
    order = None  # unshuffled batches are views (no copy)
    if shuffle:
        gdev = generator.device if generator is not None else torch.device("cpu")
        order = torch.randperm(n, generator=generator, device=gdev).to(x.device)  # (N,)
    for start in range(0, n, batch_size):
        if drop_last and n - start < batch_size:
            break
        if order is None:
            xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        else:
            idx = order[start:start + batch_size]  # (B,)
            xb, yb = x.index_select(0, idx), y.index_select(0, idx)  # ~3x faster than x[idx] on the CPU
        if augment == "crop_flip":
            xb = crop_flip(xb, generator, fill)
        if nhwc:
            xb = xb.contiguous(memory_format=torch.channels_last)  # a no-op for views of x
        yield xb, yb
