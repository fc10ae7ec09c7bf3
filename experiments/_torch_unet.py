"""The book's diffusion UNet in PyTorch (steps 9-10), used as a peer: equivalence tests and benchmark.

Import this module only when ``torch`` is importable (``importlib.util.find_spec("torch")``); it is
never imported by ``dlx_jax`` or by tests that do not skip without torch. The model is the book's
``UNet``/``UNetCond`` (NCHW): ``ConvBlock(in_ch, out_ch)`` adds ``mlp(v)`` (Linear → ReLU → Linear
to ``in_ch``) to its input and applies ``[Conv2d 3x3 pad 1 → BatchNorm2d → ReLU] x 2``; ``down1``,
max-pool, ``down2``, max-pool, ``bot1``, ``nn.Upsample(scale_factor=2, mode="bilinear")``,
``torch.cat([x, x2], dim=1)``, ``up2``, upsample, ``torch.cat([x, x1], dim=1)``, ``up1``,
``Conv2d 1x1``. Two additions, both off by default: the level widths ``(f, 2f, 4f)`` are a
parameter (the book: ``f = 64``), and ``forward`` takes an optional ``label_mask`` so one batch can
mix conditional and unconditional examples as :class:`dlx_jax.unet.UNet` does.

The time vector is the book's ``pos_encoding`` written without the Python loop; the frequencies
``10000 ** (-i / D)`` are rounded from float64 once, exactly as in :func:`dlx_jax.unet.time_embedding`
(the book divides by ``exp(i / D * log(10000))`` computed in float32, which is the same number up
to float32 rounding), so that the two models can be compared to float rounding.

:func:`from_jax_params` builds a model holding the weights of a ``dlx_jax.unet`` ``(params,
batch_stats)`` pair: conv kernels HWIO → OIHW, dense kernels ``(in, out)`` → ``(out, in)``,
BatchNorm ``scale/bias/mean/var`` → ``weight/bias/running_mean/running_var``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = [
    "ConvBlock",
    "Diffuser",
    "UNet",
    "from_jax_params",
    "pos_encoding",
    "sample_steps",
    "to_nchw",
    "to_nhwc",
    "train_step",
]


def pos_encoding(timesteps: torch.Tensor, output_dim: int) -> torch.Tensor:
    """The book's sinusoidal time vector ``(n, output_dim)``: sin at even, cos at odd indices."""
    i = np.arange(output_dim)
    inv_freq = torch.tensor(10000.0 ** (-i / output_dim), dtype=torch.float32, device=timesteps.device)
    arg = timesteps.to(torch.float32)[:, None] * inv_freq
    v = torch.empty_like(arg)
    v[:, 0::2] = torch.sin(arg[:, 0::2])
    v[:, 1::2] = torch.cos(arg[:, 1::2])
    return v


class ConvBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, time_embed_dim: int):
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, 3, padding=1),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(),
            nn.Conv2d(out_ch, out_ch, 3, padding=1),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(),
        )
        self.mlp = nn.Sequential(nn.Linear(time_embed_dim, in_ch), nn.ReLU(), nn.Linear(in_ch, in_ch))

    def forward(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        n, c, _, _ = x.shape
        v = self.mlp(v).view(n, c, 1, 1)
        return self.convs(x + v)


class UNet(nn.Module):
    """The book's ``UNet(in_ch=1, time_embed_dim=100)`` (``UNetCond`` when ``num_labels`` is set)."""

    def __init__(
        self, in_ch: int = 1, time_embed_dim: int = 100, num_labels: int | None = None, features: int = 64
    ):
        super().__init__()
        f = features
        self.time_embed_dim = time_embed_dim
        self.down1 = ConvBlock(in_ch, f, time_embed_dim)
        self.down2 = ConvBlock(f, 2 * f, time_embed_dim)
        self.bot1 = ConvBlock(2 * f, 4 * f, time_embed_dim)
        self.up2 = ConvBlock(4 * f + 2 * f, 2 * f, time_embed_dim)
        self.up1 = ConvBlock(2 * f + f, f, time_embed_dim)
        self.out = nn.Conv2d(f, in_ch, 1)
        self.maxpool = nn.MaxPool2d(2)
        self.upsample = nn.Upsample(scale_factor=2, mode="bilinear")
        if num_labels is not None:
            self.label_emb = nn.Embedding(num_labels, time_embed_dim)

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        labels: torch.Tensor | None = None,
        label_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        t = pos_encoding(timesteps, self.time_embed_dim)
        if labels is not None:
            emb = self.label_emb(labels)
            if label_mask is not None:
                emb = emb * label_mask.to(emb.dtype)[:, None]
            t = t + emb
        x1 = self.down1(x, t)
        x = self.maxpool(x1)
        x2 = self.down2(x, t)
        x = self.maxpool(x2)
        x = self.bot1(x, t)
        x = self.upsample(x)
        x = torch.cat([x, x2], dim=1)
        x = self.up2(x, t)
        x = self.upsample(x)
        x = torch.cat([x, x1], dim=1)
        x = self.up1(x, t)
        return self.out(x)


def _t(a) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float32))


def _load_block(block: ConvBlock, p: dict, s: dict) -> None:
    block.mlp[0].weight.copy_(_t(p["mlp1"]["kernel"]).T)
    block.mlp[0].bias.copy_(_t(p["mlp1"]["bias"]))
    block.mlp[2].weight.copy_(_t(p["mlp2"]["kernel"]).T)
    block.mlp[2].bias.copy_(_t(p["mlp2"]["bias"]))
    for conv, bn, i in ((block.convs[0], block.convs[1], 1), (block.convs[3], block.convs[4], 2)):
        conv.weight.copy_(_t(p[f"conv{i}"]["kernel"]).permute(3, 2, 0, 1))
        conv.bias.copy_(_t(p[f"conv{i}"]["bias"]))
        bn.weight.copy_(_t(p[f"bn{i}"]["scale"]))
        bn.bias.copy_(_t(p[f"bn{i}"]["bias"]))
        bn.running_mean.copy_(_t(s[f"bn{i}"]["mean"]))
        bn.running_var.copy_(_t(s[f"bn{i}"]["var"]))


def from_jax_params(params: dict, batch_stats: dict) -> UNet:
    """A torch ``UNet`` with the weights and running statistics of a ``dlx_jax.unet.UNet``.

    Sizes (channels, width ``f``, time dimension, number of labels) are read from ``params``.
    """
    k1 = np.shape(params["down1"]["conv1"]["kernel"])  # (3, 3, channels, f)
    time_dim = int(np.shape(params["down1"]["mlp1"]["kernel"])[0])
    num_labels = int(np.shape(params["label_emb"])[0]) if "label_emb" in params else None
    model = UNet(int(k1[2]), time_dim, num_labels, features=int(k1[3]))
    with torch.no_grad():
        for name in ("down1", "down2", "bot1", "up2", "up1"):
            _load_block(getattr(model, name), params[name], batch_stats[name])
        model.out.weight.copy_(_t(params["out"]["kernel"]).permute(3, 2, 0, 1))
        model.out.bias.copy_(_t(params["out"]["bias"]))
        if num_labels is not None:
            model.label_emb.weight.copy_(_t(params["label_emb"]))
    return model


class Diffuser:
    """The book's ``Diffuser`` schedule: ``betas = linspace(beta_start, beta_end, T)``, 1-based ``t``."""

    def __init__(self, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
        self.num_timesteps = num_timesteps
        self.betas = torch.linspace(beta_start, beta_end, num_timesteps)
        self.alphas = 1 - self.betas
        self.alpha_bars = torch.cumprod(self.alphas, dim=0)

    def add_noise(self, x_0: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha_bar = self.alpha_bars[t - 1].view(-1, 1, 1, 1)
        noise = torch.randn_like(x_0)
        return torch.sqrt(alpha_bar) * x_0 + torch.sqrt(1 - alpha_bar) * noise, noise

    def denoise(self, model: UNet, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """One ancestral step ``x_t -> x_{t-1}`` with the model in eval mode (the book's ``denoise``)."""
        alpha = self.alphas[t - 1].view(-1, 1, 1, 1)
        alpha_bar = self.alpha_bars[t - 1].view(-1, 1, 1, 1)
        alpha_bar_prev = self.alpha_bars[(t - 2).clamp(min=0)].view(-1, 1, 1, 1)
        alpha_bar_prev = torch.where(
            t.view(-1, 1, 1, 1) == 1, torch.ones_like(alpha_bar_prev), alpha_bar_prev
        )
        model.eval()
        with torch.no_grad():
            eps = model(x, t)
        model.train()
        noise = torch.randn_like(x)
        noise[t == 1] = 0
        mu = (x - ((1 - alpha) / torch.sqrt(1 - alpha_bar)) * eps) / torch.sqrt(alpha)
        std = torch.sqrt((1 - alpha) * (1 - alpha_bar_prev) / (1 - alpha_bar))
        return mu + noise * std


def train_step(model: UNet, optimizer: torch.optim.Optimizer, diffuser: Diffuser, x: torch.Tensor) -> float:
    """The book's training step on one batch: random ``t``, noise, MSE, backward, optimizer step."""
    t = torch.randint(1, diffuser.num_timesteps + 1, (len(x),))
    x_noisy, noise = diffuser.add_noise(x, t)
    noise_pred = model(x_noisy, t)
    loss = torch.nn.functional.mse_loss(noise, noise_pred)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def sample_steps(model: UNet, diffuser: Diffuser, x: torch.Tensor, steps: int) -> torch.Tensor:
    """``steps`` denoising steps ``t = steps..1`` of the book's sampling loop, from ``x``."""
    for i in range(steps, 0, -1):
        x = diffuser.denoise(model, x, torch.full((len(x),), i, dtype=torch.long))
    return x


def to_nchw(x) -> torch.Tensor:
    """NHWC numpy/JAX images → a contiguous NCHW float32 tensor."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x, dtype=np.float32).transpose(0, 3, 1, 2)))


def to_nhwc(x: torch.Tensor) -> np.ndarray:
    """NCHW tensor → NHWC numpy array."""
    return x.detach().permute(0, 2, 3, 1).numpy()
