"""Learning-rate schedules (lit/lr_schedules.py)."""

from __future__ import annotations

import math

import pytest
import torch

from diffusionlab.lit.lr_schedules import max_time_used, warmup_cosine


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


def _lrs(steps: int, **kwargs) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, **kwargs)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_time_budget_decays_by_the_larger_of_step_and_time_progress():
    """With ``time_budget=True`` a run whose wall-clock budget runs out before its step total still reaches
    ``min_factor``: here the clock says 50% at step 20 of 1000 and 100% from step 40 on; without the flag the
    same clock is ignored (the step-based cosine has barely started)."""
    clock = {"step": 0}

    def time_used():
        return min(1.0, clock["step"] / 40)

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    kwargs = dict(warmup_steps=5, total_steps=1000, cosine=True, min_factor=0.1, time_used=time_used)
    timed = warmup_cosine(opt, time_budget=True, **kwargs)
    lrs = []
    for step in range(60):
        clock["step"] = step
        lrs.append(timed.get_last_lr()[0])
        opt.step()
        timed.step()
    assert lrs[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    # factor at step s uses time_used() read during scheduler.step() with clock = s - 1
    assert lrs[21] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 20 / 40)))
    assert lrs[45:] == pytest.approx([0.1] * 15)
    assert all(a >= b for a, b in zip(lrs[5:], lrs[6:])), "the decay must be monotone"
    untimed = _lrs(60, **kwargs)
    assert untimed[45] > 0.99 and untimed == _lrs(60, **{**kwargs, "time_used": None})


def test_max_time_used_reads_lightnings_timer_including_a_resumed_offset(monkeypatch):
    """``max_time_used`` is the fraction of ``max_time`` spent according to the trainer's ``Timer`` callback,
    counting the time a resumed checkpoint had already used; None without ``max_time``."""
    import lightning as L
    from lightning.pytorch.callbacks import timer as timer_module

    assert max_time_used(L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)) is None
    trainer = L.Trainer(max_time="00:00:02:00", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    timer = next(c for c in trainer.callbacks if isinstance(c, timer_module.Timer))
    timer.load_state_dict({"time_elapsed": {"train": 30.0}})  # a checkpoint that had used 30 s of 120
    assert max_time_used(trainer) == pytest.approx(0.25)
    now = {"t": 1000.0}
    monkeypatch.setattr(timer_module.time, "monotonic", lambda: now["t"])
    timer.on_train_start(trainer, None)
    now["t"] += 60.0
    assert max_time_used(trainer) == pytest.approx(0.75)
    now["t"] += 60.0
    assert max_time_used(trainer) == 1.0
