"""Learning-rate schedules (lit/lr_schedules.py)."""

from __future__ import annotations

import pytest
import torch

from diffusionlab.lit.lr_schedules import warmup_cosine


def test_cosine_total_is_asked_for_only_when_the_decay_starts():
    """``warmup_cosine`` with a callable total does not call it while building the scheduler or during the
    warm-up (a module's total builds the training loader, which must wait for a resumed checkpoint), calls it
    once, and then decays exactly as with the integer total."""
    calls = []

    def total():
        calls.append(1)
        return 20

    def lrs(total_steps):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = warmup_cosine(opt, warmup_steps=5, total_steps=total_steps, cosine=True, min_factor=0.1)
        out = []
        for _ in range(25):
            out.append(opt.param_groups[0]["lr"])
            if len(out) == 6 and callable(total_steps):
                assert not calls, "the total was asked for during the warm-up"
            opt.step()
            sched.step()
        return out

    lazy, eager = lrs(total), lrs(20)
    assert lazy == eager and len(calls) == 1
    assert eager[:5] == [0.2, 0.4, 0.6, 0.8, 1.0] and eager[20] == pytest.approx(0.1) and eager[12] < 1.0
