"""The book's VAE in PyTorch (step 7's code), used as a peer: training dynamics and benchmark.

Import this module only when ``torch`` is importable (``importlib.util.find_spec("torch")``); it is
never imported by ``dlx_jax`` or by the default tests. The model and loss are the book's:
``Encoder`` (784 → 200 ReLU → μ, log σ²), ``Decoder`` (20 → 200 ReLU → 784 sigmoid),
``reparameterize(mu, sigma) = mu + eps * sigma`` and

    loss = (F.mse_loss(x_hat, x, reduction="sum") - torch.sum(1 + log σ² - μ² - σ²)) / batch_size

trained with ``torch.optim.Adam``. The training loop here indexes one in-memory float tensor with
precomputed batch indices (no ``DataLoader``), the fastest plain PyTorch loop, so that the
comparison measures the model step and not data loading.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["VAE", "from_jax_params", "train_epoch"]


class Encoder(nn.Module):
    def __init__(self, input_dim: int, hidden_dim: int, latent_dim: int):
        super().__init__()
        self.linear = nn.Linear(input_dim, hidden_dim)
        self.linear_mu = nn.Linear(hidden_dim, latent_dim)
        self.linear_logvar = nn.Linear(hidden_dim, latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.relu(self.linear(x))
        mu = self.linear_mu(h)
        logvar = self.linear_logvar(h)
        sigma = torch.exp(0.5 * logvar)
        return mu, sigma


class Decoder(nn.Module):
    def __init__(self, latent_dim: int, hidden_dim: int, output_dim: int):
        super().__init__()
        self.linear1 = nn.Linear(latent_dim, hidden_dim)
        self.linear2 = nn.Linear(hidden_dim, output_dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.linear1(z))
        return torch.sigmoid(self.linear2(h))


def reparameterize(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    eps = torch.randn_like(sigma)
    return mu + eps * sigma


class VAE(nn.Module):
    """The book's ``VAE(input_dim, hidden_dim, latent_dim)`` with ``get_loss(x)``."""

    def __init__(self, input_dim: int = 784, hidden_dim: int = 200, latent_dim: int = 20):
        super().__init__()
        self.encoder = Encoder(input_dim, hidden_dim, latent_dim)
        self.decoder = Decoder(latent_dim, hidden_dim, input_dim)

    def get_loss(self, x: torch.Tensor) -> torch.Tensor:
        mu, sigma = self.encoder(x)
        z = reparameterize(mu, sigma)
        x_hat = self.decoder(z)
        batch_size = len(x)
        L1 = F.mse_loss(x_hat, x, reduction="sum")  # noqa: N806 (the book's names)
        L2 = -torch.sum(1 + torch.log(sigma**2) - mu**2 - sigma**2)  # noqa: N806
        return (L1 + L2) / batch_size


def _copy(linear: nn.Linear, dense) -> None:
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(np.asarray(dense.w, dtype=np.float32).T.copy()))
        linear.bias.copy_(torch.from_numpy(np.asarray(dense.b, dtype=np.float32).copy()))


def from_jax_params(params) -> VAE:
    """A torch ``VAE`` holding the same weights as :class:`dlx_jax.vae.VAEParams` ``params``."""
    input_dim, hidden_dim = params.encoder.hidden.w.shape
    latent_dim = params.encoder.mu.w.shape[1]
    model = VAE(int(input_dim), int(hidden_dim), int(latent_dim))
    _copy(model.encoder.linear, params.encoder.hidden)
    _copy(model.encoder.linear_mu, params.encoder.mu)
    _copy(model.encoder.linear_logvar, params.encoder.logvar)
    _copy(model.decoder.linear1, params.decoder.hidden)
    _copy(model.decoder.linear2, params.decoder.out)
    return model


def train_epoch(model: VAE, optimizer: torch.optim.Optimizer, x: torch.Tensor, batches: np.ndarray) -> float:
    """One epoch of the book's loop over ``batches`` (``(t, b)`` example indices); the mean loss."""
    total = 0.0
    index = torch.from_numpy(np.asarray(batches, dtype=np.int64))
    for i in range(index.shape[0]):
        loss = model.get_loss(x[index[i]])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += loss.item()
    return total / index.shape[0]
