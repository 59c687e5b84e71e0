"""A split's packed rows as the trainer reads them: an endless stream of seeded per-epoch shuffles."""

from __future__ import annotations

import torch

from training.dataset import collate
from training.loss import label_positions


class RowStream:
    """A split's packed rows as tensors, read as an endless stream of per-epoch shuffles.

    Micro-batch g holds stream positions [g * mbs, (g + 1) * mbs); position i is row perm(i // N)[i % N].
    """

    def __init__(self, rows, seed: int, shuffle: bool = True):
        if not rows:
            raise ValueError("no rows to train on")
        self.tensors = collate(rows)
        self.loss_tokens = label_positions(self.tensors["labels"], self.tensors["position_ids"]).sum(1)
        self.tokens = torch.tensor([sum(r.lengths) for r in rows])  # padding excluded
        self.n, self.seed, self.shuffle = len(rows), seed, shuffle
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._perms = {
                e: p for e, p in self._perms.items() if e == epoch - 1
            }  # a batch spans <= 2 epochs
            self._perms[epoch] = torch.randperm(self.n, generator=g) if self.shuffle else torch.arange(self.n)
        return self._perms[epoch]

    def rows(self, g: int, mbs: int) -> torch.Tensor:
        return torch.stack([self._perm(i // self.n)[i % self.n] for i in range(g * mbs, (g + 1) * mbs)])

    def batch(self, idx: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
        return {k: v[idx].to(device, non_blocking=True) for k, v in self.tensors.items()}
