"""The non-finite watch: the first step of an epoch whose loss, logits or weights went nan/inf,
recorded on the device (no host sync per step) and read only at the loop's sync points."""

from __future__ import annotations

import torch

LOSS, LOGITS, SAMPLE_W = 1, 2, 4
NAMES = {LOSS: "loss", LOGITS: "logits (clean or adversarial)", SAMPLE_W: "per-example weights"}


class FiniteWatch:
    """A forward hook flags non-finite model outputs (every forward: the attack's and the loss's);
    :meth:`step` folds the loss, those logits and the scheme's weights into ``first``/``code``."""

    def __init__(self, model: torch.nn.Module, device):
        self.device = device
        self._logits_bad = torch.zeros((), dtype=torch.bool, device=device)
        self.reset()
        self._hook = model.register_forward_hook(self._on_forward)

    def reset(self) -> None:
        self._logits_bad.zero_()  # forwards outside training steps (validation) do not count
        self.first = torch.full((), -1, dtype=torch.long, device=self.device)
        self.code = torch.zeros((), dtype=torch.long, device=self.device)

    def _on_forward(self, module, inputs, output):
        if isinstance(output, torch.Tensor) and output.is_floating_point():
            self._logits_bad |= ~torch.isfinite(output.detach()).all()

    def step(self, index: int, out: dict) -> None:
        code = ((~torch.isfinite(out["loss"])).long() * LOSS + self._logits_bad.long() * LOGITS
                + (~torch.isfinite(out["w"]).all()).long() * SAMPLE_W)
        self._logits_bad.zero_()
        hit = (self.first < 0) & (code > 0)
        self.first = torch.where(hit, torch.full_like(self.first, index), self.first)
        self.code = torch.where(hit, code, self.code)

    def bad_step(self) -> tuple[int, int] | None:
        """``(step, code)`` of the first non-finite step, or None (one host sync)."""
        first = int(self.first.item())
        return None if first < 0 else (first, int(self.code.item()))

    def close(self) -> None:
        self._hook.remove()


def describe(code: int) -> str:
    return " and ".join(n for b, n in NAMES.items() if code & b)
