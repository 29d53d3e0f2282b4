"""The running sums behind one epoch record; :meth:`EpochSums.state` is what a mid-epoch checkpoint holds."""

from __future__ import annotations

import time

import torch


class EpochSums:
    def __init__(self, num_classes: int, device, state: dict | None = None):
        self.loss = torch.zeros((), device=device)
        self.correct_adv = torch.zeros((), device=device, dtype=torch.long)
        self.class_w = torch.zeros(num_classes, device=device)
        self.ws: list[torch.Tensor] = []
        self.seen, self.elapsed, self.t0 = 0, 0.0, time.time()
        if state:
            self.loss.copy_(state["loss"])
            self.correct_adv.copy_(state["correct_adv"])
            self.class_w.copy_(state["class_w"])
            self.ws = [state["ws"].to(device)]
            self.seen, self.elapsed = int(state["seen"]), float(state["elapsed"])

    def add(self, out: dict, y: torch.Tensor) -> None:
        self.loss += out["loss"] * len(y)
        self.correct_adv += out["correct_adv"]
        self.class_w.index_add_(0, y, out["w"])
        self.ws.append(out["w"])
        self.seen += len(y)

    def time_s(self) -> float:
        return self.elapsed + time.time() - self.t0

    def state(self) -> dict:
        ws = torch.cat(self.ws) if self.ws else torch.zeros(0)
        return {"loss": self.loss.cpu(), "correct_adv": self.correct_adv.cpu(), "class_w": self.class_w.cpu(),
                "ws": ws.cpu(), "seen": self.seen, "elapsed": self.time_s()}

    def record(self, epoch: int, lr: float, burn_in: bool) -> dict:
        w_all = torch.cat(self.ws)
        t = self.time_s()
        return {"epoch": epoch + 1, "lr": lr, "burn_in": burn_in,
                "train_loss": (self.loss / self.seen).item(), "train_adv_acc": self.correct_adv.item() / self.seen,
                "w_mean": w_all.mean().item(), "w_std": w_all.std().item() if len(w_all) > 1 else 0.0,
                "w_min": w_all.min().item(), "w_max": w_all.max().item(),
                "epoch_time_s": t, "images_per_s": self.seen / max(t, 1e-9),
                "class_weight_sum": self.class_w.tolist()}
