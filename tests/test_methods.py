"""The method family (L2, l-MAS, vector MAS, SPP, EWC, online EWC): each against an independent reference."""

from __future__ import annotations

import torch
from conftest import tiny_mlp

from masllm import MASConfig, compute_importance


def test_l2_is_uniform_omega_one():
    model = tiny_mlp()
    model[0].bias.requires_grad_(False)  # frozen: no Omega
    for normalize in ("samples", "batches"):
        cfg = MASConfig(method="l2", normalize=normalize)
        omega = compute_importance(model, [torch.randn(4, 6), torch.randn(3, 6)], cfg, show_progress=False)
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert set(omega) == trainable
        for n, p in model.named_parameters():
            if p.requires_grad:
                torch.testing.assert_close(omega[n], torch.ones_like(p))
        assert omega.tasks[0]["num_samples"] == 7
