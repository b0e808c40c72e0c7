"""A small class-conditional image generator for LFM-CW: a conditional VAE (MLP encoder and decoder).

Why a VAE rather than a GAN: one stable loss, one optimizer, no discriminator to balance, and it
trains alongside the search at a few percent of a supernet step. Its samples only feed W2's
class-weighted training data, so fidelity matters less than cheapness and stability.
"""

from __future__ import annotations

import torch
from torch import nn


class ConditionalVAE(nn.Module):
    """``sample(labels)`` draws images of the given (global) classes; ``loss(x, labels)`` is the negative ELBO."""

    def __init__(self, num_classes: int, in_channels: int, image_size: int, latent_dim: int = 32, hidden: int = 256):
        super().__init__()
        self.num_classes, self.latent_dim = num_classes, latent_dim
        self.shape = (in_channels, image_size, image_size)
        dim = in_channels * image_size * image_size
        self.encoder = nn.Sequential(nn.Linear(dim + num_classes, hidden), nn.ReLU(),
                                     nn.Linear(hidden, 2 * latent_dim))
        self.decoder = nn.Sequential(nn.Linear(latent_dim + num_classes, hidden), nn.ReLU(),
                                     nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, dim))

    def _onehot(self, labels: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(labels, self.num_classes).float()

    def decode(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.decoder(torch.cat([z, self._onehot(labels)], dim=1)).view(len(z), *self.shape)

    def loss(self, x: torch.Tensor, labels: torch.Tensor, rng: torch.Generator | None = None) -> torch.Tensor:
        """Gaussian reconstruction (squared error, per image) + KL to N(0, I), averaged over the batch.

        ``rng``: a generator of its own, so that a resumed search draws the same noise (the global RNG also
        seeds DataLoader iterators, which a resumed run recreates at other points).
        """
        x = x.float()
        h = self.encoder(torch.cat([x.flatten(1), self._onehot(labels)], dim=1))
        mu, logvar = h.chunk(2, dim=1)
        z = mu + torch.randn(mu.shape, generator=rng, device=mu.device) * (0.5 * logvar).exp()
        recon = self.decode(z, labels)
        rec = ((recon - x) ** 2).flatten(1).sum(1)
        kl = -0.5 * (1 + logvar - mu**2 - logvar.exp()).sum(1)
        return (rec + kl).mean()

    @torch.no_grad()
    def sample(self, labels: torch.Tensor, rng: torch.Generator | None = None) -> torch.Tensor:
        z = torch.randn(len(labels), self.latent_dim, generator=rng, device=labels.device)
        return self.decode(z, labels)
