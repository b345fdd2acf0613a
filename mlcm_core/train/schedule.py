"""Learning-rate schedule: linear warm-up, then cosine decay to a floor.

Why: contrastive pre-training with AdamW is unstable in its first steps (Adam's second-moment estimates are
still noise and the temperature is far from its final value), so the LR ramps up linearly; a cosine decay
afterwards is the CLIP / SimCLR default and needs no tuning beyond the total step count.

Step convention (used everywhere, including the training log): ``step`` counts optimizer updates from 1.
``lr_at(step)`` is the LR *applied by update number step*:

    lr(s) = base · s / W                                          for 1 <= s <= W   (W = warmup_steps)
    lr(s) = base · [m + (1 - m) · ½ (1 + cos(π (s - W) / (T - W)))]  for W < s <= T   (T = total_steps)
    lr(s) = base · m                                              for s > T         (m = min_lr_ratio)

so update W runs at the full base LR and update T at the floor. ``warmup_cosine_schedule`` wraps the same
function in a ``LambdaLR`` (which calls its lambda with the number of ``scheduler.step()`` calls so far, 0
before the first update, hence the +1).
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["WarmupCosine", "lr_at", "lr_factor", "warmup_cosine_schedule"]


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0) -> float:
    """Multiplier of the base LR for optimizer update ``step`` (1-based, see the module docstring)."""
    if step <= 0:
        raise ValueError(f"steps count from 1, got {step}")
    if warmup_steps > 0 and step <= warmup_steps:
        return step / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min(max((step - warmup_steps) / span, 0.0), 1.0)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_at(step: int, base_lr: float, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0) -> float:
    """The LR applied by optimizer update ``step`` (1-based)."""
    return base_lr * lr_factor(step, warmup_steps, total_steps, min_lr_ratio)


class WarmupCosine:
    """LambdaLR's lambda as a small object: its attributes go into the scheduler's state_dict (plain numbers)."""

    def __init__(self, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0) -> None:
        if warmup_steps < 0 or total_steps < 1:
            raise ValueError(f"need warmup_steps >= 0 and total_steps >= 1, got {warmup_steps}, {total_steps}")
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)
        self.min_lr_ratio = float(min_lr_ratio)

    def __call__(self, scheduler_steps: int) -> float:
        return lr_factor(scheduler_steps + 1, self.warmup_steps, self.total_steps, self.min_lr_ratio)


def warmup_cosine_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                           min_lr_ratio: float = 0.0) -> LambdaLR:
    """LambdaLR applying ``lr_factor``: call ``scheduler.step()`` once after every ``optimizer.step()``."""
    return LambdaLR(optimizer, WarmupCosine(warmup_steps, total_steps, min_lr_ratio))
