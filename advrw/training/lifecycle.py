"""The run state: how one training run opens, continues, checkpoints and stops.

:class:`RunState` composes the policies, each in its own module:

- :mod:`.rundir` -- the run-dir lock, a requeued job continuing in place, a resumed run's new dir;
- :mod:`advrw.config.resume` -- the checkpoint ``resume=`` names and the one config merge;
- :mod:`.checkpointer` -- when last.pt/best.pt are written (the payload is built here, in one place:
  add keys to ``RunState.extra``);
- :mod:`.signals` -- signals stop at a step boundary (or after an attack in the final evaluation);
- :mod:`.finite` -- the first non-finite step, read at the loop's sync points;
- :mod:`.sums` -- the epoch's running sums, saveable mid-epoch.
Error types and exit codes: :mod:`advrw.core.errors`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from advrw.config import resume as resume_cfg
from advrw.core import checkpoints as ckpt_io
from advrw.core.errors import AdvrwError, Interrupted, NonFiniteError, resume_command
from advrw.training import rundir
from advrw.training.checkpointer import Checkpointer
from advrw.training.finite import FiniteWatch, describe
from advrw.training.signals import SignalGuard
from advrw.training.sums import EpochSums

log = logging.getLogger("advrw.training.lifecycle")


class RunState:
    """Lifecycle: ``RunState.open(cfg, run_dir, overrides, choices)`` (before data is built) ->
    ``attach(...)`` (model, optimizer, scheduler, generator, data) -> per step ``after_step`` ->
    per epoch ``begin_epoch``/``end_epoch`` -> ``finished_training()`` (final evaluation)."""

    def __init__(self, cfg, run_dir: Path, resumed: dict | None, source: Path | None):
        self.cfg, self.run_dir, self.resumed, self.source = cfg, Path(run_dir), resumed, source
        self.start_epoch = int(resumed["epoch"]) if resumed else 0
        self.class_sums = list(resumed.get("class_weight_sums", [])) if resumed else []
        self.position = resumed.get("position") if resumed else None
        self.extra: dict = {}  # more checkpoint keys (e.g. a W&B run id, hardware settings)
        self.guard = SignalGuard(self.run_dir)
        self.watch: FiniteWatch | None = None
        self.saver = Checkpointer(self.run_dir, cfg.get("checkpoint_every", 1), self.payload, self._nonfinite,
                                  best=float(resumed.get("best_robust", -1.0)) if resumed else -1.0,
                                  has_last=resumed is not None)
        self.opt = None
        self.ema = None  # advrw.methods.ema.ModelEMA, when the run averages its weights

    @property
    def best_robust(self) -> float:
        return self.saver.best

    # ---------------------------------------------------------------- opening (before any data)
    @classmethod
    def open(cls, cfg, run_dir: Path, overrides: list[str] | None = None, choices: dict | None = None) -> "RunState":
        """Read ``resume=`` (or an interrupted checkpoint in ``run_dir`` itself) and return the run state."""
        run_dir = Path(run_dir)
        resumed, source = None, None
        if cfg.resume:
            source, resumed = resume_cfg.training_checkpoint(cfg)
            cfg = resume_cfg.merge(cfg, resumed, overrides or [], choices or {})
        elif (run_dir / "last.pt").exists():
            resumed = rundir.interrupted_here(cfg, run_dir)
            if resumed is None:
                rundir.refuse_occupied(run_dir)
            source = run_dir / "last.pt"
            log.info("continuing the interrupted run in %s (%s)", run_dir, resumed["interrupted"])
        elif (run_dir / "metrics.jsonl").exists():  # killed inside its first save: nothing to continue
            log.warning("%s holds records but no checkpoint (a run killed before its first save): starting again",
                        run_dir)
            rundir.trim_metrics(run_dir / "metrics.jsonl", run_dir / "metrics.jsonl", 0)
        state = cls(cfg, run_dir, resumed, source)
        if resumed is not None:
            resumed["path"] = str(source)
        return state

    def prepare_dir(self) -> None:
        rundir.prepare(self.run_dir, self.source, self.start_epoch)

    def completed_results(self) -> dict | None:
        """A resumed run whose training and evaluation are both done: its results (nothing to run)."""
        if self.resumed is None or self.position:
            return None
        return rundir.completed_results(self.source, self.start_epoch, int(self.cfg.schedule.epochs))

    # ----------------------------------------------------------------------- training objects
    def attach(self, model, optimizer, scheduler, generator, data, *, config: dict, choices: dict, info: dict,
               spec=None) -> None:
        """Hold the training objects; a resumed run gets their saved states back."""
        self.model, self.opt, self.sched, self.gen, self.data = model, optimizer, scheduler, generator, data
        self.config, self.choices, self.info, self.spec = config, choices, info, spec
        if self.resumed is not None:
            r = self.resumed
            ckpt_io.load_model_state(model, r["model"], r["path"], self.cfg.model.name, data.num_classes)
            optimizer.load_state_dict(r["optimizer"])
            scheduler.load_state_dict(r["scheduler"])
            ckpt_io.restore_rng(r["rng"], generator)
            where = f"epoch {self.start_epoch}" + (f", batch {self.position['batch']}" if self.position else "")
            log.info("resumed from %s at %s", r["path"], where)
        self.watch = FiniteWatch(model, generator.device)

    def attach_ema(self, ema) -> None:
        """Hold the run's EMA (checkpointed as ``ema``); a resumed run gets its averaged weights back."""
        self.ema = ema
        if ema is not None and self.resumed is not None:
            ema.load_state_dict(self.resumed["ema"])

    def payload(self, epoch: int, position: dict | None = None, interrupted: str | None = None) -> dict:
        """Everything a checkpoint holds (the one place it is built): tensors and plain containers."""
        return {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(), "rng": ckpt_io.rng_state(self.gen), "epoch": epoch,
                "position": position, "interrupted": interrupted, "best_robust": self.best_robust,
                "config": self.config, "choices": self.choices, "run_info": self.info,
                "class_weight_sums": self.class_sums, "num_classes": self.data.num_classes,
                "classes": list(self.data.classes), **({"ema": self.ema.state_dict()} if self.ema is not None else {}),
                **self.extra}

    # ------------------------------------------------------------------------------ the loop
    def epoch_range(self) -> range:
        s = self.cfg.schedule
        end = int(s.epochs) if self.cfg.stop_after is None else min(int(s.epochs),
                                                                     self.start_epoch + int(self.cfg.stop_after))
        self.stop_epoch = end
        return range(self.start_epoch, end)

    def begin_epoch(self, epoch: int, device) -> tuple[EpochSums, torch.Tensor | None, int]:
        """``(sums, order, first batch)``: fresh, or where an interrupted epoch stopped."""
        self.watch.reset()
        pos, self.position = self.position, None
        if pos is not None and int(pos["epoch"]) == epoch:
            sums, order, first = EpochSums(self.data.num_classes, device, pos["sums"]), pos["order"], int(pos["batch"])
        else:
            sums, order, first = EpochSums(self.data.num_classes, device), None, 0
        if self.guard.requested is not None:  # a signal while data loaded or between epochs
            self._stop(epoch, {"epoch": epoch, "batch": first, "order": order, "sums": sums.state()},
                       f"epoch {epoch + 1}, step {first}")
        return sums, order, first

    def after_step(self, epoch: int, i: int, out: dict, sums: EpochSums, order, n_batches: int,
                   sync: bool) -> None:
        """Record finiteness; at a sync point check it; on a pending signal save and stop."""
        self.watch.step(i, out)
        self.guard.fault_point(epoch, i)
        if sync:
            self.check_finite(epoch)
        if self.guard.requested is not None and i + 1 < n_batches:
            self.check_finite(epoch)
            position = {"epoch": epoch, "batch": i + 1, "order": None if order is None else order.cpu(),
                        "sums": sums.state()}
            self._stop(epoch, position, f"epoch {epoch + 1}, step {i + 1}/{n_batches}")

    def check_finite(self, epoch: int) -> None:
        bad = self.watch.bad_step()
        if bad is not None:
            step, code = bad
            raise self._nonfinite(epoch, step + 1, describe(code))  # steps counted from 1, as in the signal line

    def check_batches(self, n_train: int) -> None:
        """A batch larger than the training set (known once the data is loaded, e.g. a full data set)."""
        bs = int(self.cfg.schedule.batch_size)
        if bs > n_train:
            raise AdvrwError(f"schedule.batch_size={bs} is invalid: must be in 1..{n_train}, the training set's size")

    def check_weights(self, epoch: int, record: dict) -> None:
        """A whole epoch of zero weights trains nothing: one warning naming the scheme and its settings."""
        if record["w_max"] == 0 and self.spec is not None and not record.get("burn_in"):
            log.warning("weighting=%s %s gave every example weight 0 for all of epoch %d: the adversarial loss "
                        "contributed nothing (check the scheme's hyperparameters)", self.spec.scheme,
                        self.spec.scheme_hparams, epoch + 1)

    def is_best(self, metric: float | None) -> bool:
        return self.saver.is_best(metric)

    def end_epoch(self, epoch: int, metric: float | None = None) -> None:
        """After the epoch's record: last.pt/best.pt as due, then a pending signal stops the run."""
        final = epoch + 1 == self.stop_epoch
        signalled = self.guard.requested is not None
        self.saver.end_epoch(epoch, metric, final, self.guard.name if signalled else None)
        if signalled and not final:
            self._stop(epoch + 1, None, f"the end of epoch {epoch + 1}", saved=True)

    def _stop(self, epoch: int, position: dict | None, where: str, saved: bool = False) -> None:
        name = self.guard.name
        if not saved:
            self.saver.write("last.pt", self.payload(epoch, position=position, interrupted=name), epoch)
        self.guard.hand_over()  # submitit requeues (exits) here
        raise Interrupted(f"{name}: stopped at {where}, checkpoint {self.run_dir / 'last.pt'}; "
                          f"continue with: {resume_command(self.run_dir)}")

    def _nonfinite(self, epoch: int, step: int | None, what: str) -> NonFiniteError:
        lr = self.opt.param_groups[0]["lr"] if self.opt is not None else float("nan")
        hp = ""
        if self.spec is not None:
            hp = f", weighting={self.spec.scheme} {self.spec.scheme_hparams}"
            if self.spec.defense_kwargs:
                hp += f", defense={self.spec.defense} {self.spec.defense_kwargs}"
        last = self.saver.saved_last
        kept = f"last finite checkpoint: {last}" if last and last.exists() else "no checkpoint was written"
        at = f"epoch {epoch + 1}" + (f", step {step}" if step is not None else "")
        return NonFiniteError(f"non-finite values: {what} became nan/inf at {at} (lr={lr:g}{hp}); "
                              f"training stopped, {kept}")

    def finished_training(self) -> None:
        """From here signals wait for the next safe point of the final evaluation (last.pt is complete)."""
        self.guard.phase = "the final evaluation"
        if self.watch is not None:
            self.watch.close()
