"""Capsule network with dynamic routing (Sabour, Frosst and Hinton, 2017), for RGB or grey images.

Layout: a 9x9 convolution, an adaptive pooling to 20x20 (so that any input size gives the paper's
6x6 grid of primary capsules), 8-D primary capsules, and one 16-D capsule per class reached by routing
by agreement. The length of a class capsule is the probability that the class is present.

The uniform face holds: ``forward`` returns logits, ``log(p / (1 - p))`` of the capsule lengths, so a
sigmoid gives the lengths back and a softmax ranks classes as the lengths do. Training uses
``compute_loss`` (the margin loss plus the scaled reconstruction loss of a decoder that sees only the
true class's capsule); the training loop calls that hook whenever a model has one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.models import register_model

_EPS = 1e-6


def squash(s: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Shrink a vector's length into [0, 1) keeping its direction: ``|s|^2 / (1 + |s|^2) * s / |s|``."""
    sq = (s * s).sum(dim=dim, keepdim=True)
    return sq / (1 + sq) * s / torch.sqrt(sq + _EPS)


class CapsuleHead(nn.Module):
    """Class capsules by dynamic routing, plus the reconstruction decoder (both depend on the classes)."""

    def __init__(
        self, num_primary: int, in_dim: int, num_classes: int, out_dim: int, iterations: int, decoder_out: int
    ):
        super().__init__()
        self.iterations = iterations
        self.weight = nn.Parameter(0.01 * torch.randn(1, num_primary, num_classes, out_dim, in_dim))
        self.decoder = nn.Sequential(
            nn.Linear(num_classes * out_dim, 512),
            nn.ReLU(inplace=True),
            nn.Linear(512, 1024),
            nn.ReLU(inplace=True),
            nn.Linear(1024, decoder_out),
        )

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """Route primary capsules ``u`` (N, P, in_dim) to class capsules (N, C, out_dim)."""
        u_hat = torch.matmul(self.weight, u[:, :, None, :, None]).squeeze(-1)  # N, P, C, out_dim
        # Routing coefficients are a function of the predictions, but gradients flow only through the
        # last iteration (the usual stabilisation; earlier iterations only choose the coefficients).
        u_detached = u_hat.detach()
        logits = torch.zeros(u_hat.shape[:3], device=u.device, dtype=u_hat.dtype)
        for i in range(self.iterations):
            c = torch.softmax(logits, dim=2)[..., None]
            if i == self.iterations - 1:
                return squash((c * u_hat).sum(dim=1))
            v = squash((c * u_detached).sum(dim=1))
            logits = logits + (u_detached * v[:, None]).sum(dim=-1)
        raise AssertionError("unreachable: iterations >= 1")


class CapsNet(nn.Module):
    """Convolution, primary capsules and routed class capsules; see the module docstring."""

    def __init__(
        self,
        num_classes: int,
        in_chans: int = 3,
        conv_channels: int = 128,
        primary_types: int = 16,
        primary_dim: int = 8,
        class_dim: int = 16,
        routing_iterations: int = 3,
        recon_size: int = 28,
        recon_weight: float = 0.0005,
        m_pos: float = 0.9,
        m_neg: float = 0.1,
        neg_weight: float = 0.5,
    ):
        super().__init__()
        assert routing_iterations >= 1
        self.num_classes = num_classes
        self._head_args = (
            primary_types * 36,
            primary_dim,
            class_dim,
            routing_iterations,
            in_chans * recon_size * recon_size,
        )
        self.primary_dim, self.recon_size, self.recon_weight = primary_dim, recon_size, recon_weight
        self.m_pos, self.m_neg, self.neg_weight = m_pos, m_neg, neg_weight
        self.conv = nn.Sequential(
            nn.Conv2d(in_chans, conv_channels, 9, padding=4), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(20)
        )
        self.primary = nn.Conv2d(conv_channels, primary_types * primary_dim, 9, stride=2)  # 20x20 -> 6x6
        self.head = self._make_head(num_classes)

    def _make_head(self, num_classes: int) -> CapsuleHead:
        primary, in_dim, out_dim, iterations, decoder_out = self._head_args
        return CapsuleHead(primary, in_dim, num_classes, out_dim, iterations, decoder_out)

    def capsules(self, x: torch.Tensor) -> torch.Tensor:
        """Return the class capsules (N, C, class_dim)."""
        p = self.primary(self.conv(x))  # N, types*dim, 6, 6
        n, _, h, w = p.shape
        u = p.view(n, -1, self.primary_dim, h, w).permute(0, 1, 3, 4, 2).reshape(n, -1, self.primary_dim)
        # Routing and squashing divide by small norms: in float16 (mixed precision) they would overflow.
        with torch.autocast(x.device.type, enabled=False):
            return self.head(squash(u.float()))

    @staticmethod
    def _logits(v: torch.Tensor) -> torch.Tensor:
        length = v.norm(dim=-1).clamp(_EPS, 1 - _EPS)
        return torch.log(length) - torch.log1p(-length)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._logits(self.capsules(x))

    def compute_loss(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Margin loss + ``recon_weight`` x summed squared reconstruction error; returns (loss, logits).

        Args:
            images: the normalised input batch.
            targets: class indices (N,) or one-hot/multi-hot floats (N, C).
        """
        v = self.capsules(images)
        onehot = targets.float() if targets.dim() == 2 else F.one_hot(targets, self.num_classes).float()
        length = v.norm(dim=-1)
        margin = (
            (
                onehot * F.relu(self.m_pos - length) ** 2
                + self.neg_weight * (1 - onehot) * F.relu(length - self.m_neg) ** 2
            )
            .sum(dim=1)
            .mean()
        )
        recon = self.head.decoder((v * onehot[..., None]).flatten(1))
        target = F.adaptive_avg_pool2d(images, self.recon_size).flatten(1)
        recon_loss = ((recon - target) ** 2).sum(dim=1).mean()
        return margin + self.recon_weight * recon_loss, self._logits(v)

    def get_classifier(self) -> nn.Module:
        """Return the class-capsule routing layer and decoder."""
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """Rebuild the class capsules and the decoder for ``num_classes`` classes."""
        self.num_classes = num_classes
        self.head = self._make_head(num_classes)


@register_model("capsnet")
def capsnet(num_classes: int, in_chans: int = 3, **kwargs) -> nn.Module:
    return CapsNet(num_classes, in_chans, **kwargs)
