"""What happens around the training loop: resume, checkpoints, signals, non-finite values.

``train.run`` owns the loop; every rule about *when* to save, *what* a checkpoint holds, how a run
continues and how it stops lives here, in one place:

- :class:`RunState` -- resume (mid-epoch too), the checkpoint payload (:meth:`RunState.payload`,
  built in one place; add keys to ``RunState.extra``), saves that refuse non-finite tensors,
  ``metrics.jsonl`` trimmed to the checkpoint, best.pt/last.pt carried into a new run dir.
- :class:`SignalGuard` -- SIGTERM/SIGINT/SIGUSR1 (and submitit's preemption signal) finish the
  current step, save a mid-epoch checkpoint and exit with :data:`EXIT_INTERRUPTED`; a second
  signal exits at once (saves are atomic, so the last good checkpoint survives).
- :class:`FiniteWatch` -- an on-device record of the first step whose loss, logits or per-example
  weights went non-finite, read only at the loop's existing sync points.
- :class:`EpochSums` -- the epoch's running sums (what the epoch record needs), saveable mid-epoch.

Exit codes (see README "Sweeps, resume, offline"): 0 done, 2 bad input, 3 non-finite values,
4 a checkpoint/record could not be written (disk full, read-only), 75 interrupted by a signal with a
checkpoint saved (EX_TEMPFAIL: resume later), 128+N a second signal N (no new checkpoint).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import torch

from advrw.core import checkpoints as ckpt_io
from advrw.core.errors import AdvrwError

log = logging.getLogger("advrw.training.lifecycle")

EXIT_BAD_INPUT = 2
EXIT_NONFINITE = 3
EXIT_WRITE = ckpt_io.CheckpointWriteError.exit_code  # 4
EXIT_INTERRUPTED = 75

# Fault injection for tests and drills: "SIGTERM@2:5" sends SIGTERM to this process after step 5
# (0-based) of epoch 2 (1-based); "SIGTERM*2@2:5" sends it twice. A resumed run that starts past
# that step never sends it again.
FAULT_ENV = "ADVRW_FAULT_SIGNAL"


class RunStop(AdvrwError):
    """A run that ends early on purpose: one line for the user and its own exit code."""

    exit_code = 1
    prefix = "advrw: error: "


class NonFiniteError(RunStop):
    exit_code = EXIT_NONFINITE


class Interrupted(RunStop):
    exit_code = EXIT_INTERRUPTED
    prefix = "advrw: "


def exit_code(err: BaseException) -> int:
    return getattr(err, "exit_code", EXIT_BAD_INPUT)


def user_line(err: BaseException) -> str:
    return getattr(err, "prefix", "advrw: error: ") + str(err)


def write_error(err: OSError) -> ckpt_io.CheckpointWriteError | None:
    """A one-line error for a failed record write (metrics, results), or None if not an I/O failure."""
    inner = ckpt_io.os_error(err)
    if inner is None or inner.errno is None:
        return None
    where = f" {inner.filename!r}" if inner.filename else ""
    return ckpt_io.CheckpointWriteError(f"cannot write{where}: {ckpt_io.describe_os_error(inner)}")


def resume_command(run_dir: Path) -> str:
    return f"python -m advrw.train resume={run_dir}"


# ----------------------------------------------------------------------------------------- signals
def _submitit_signal() -> int | None:
    """The preemption/timeout signal submitit's job handler listens to, when running under submitit."""
    if not any(k.startswith(("SUBMITIT_", "SLURM_JOB_ID")) for k in os.environ) or "submitit" not in sys.modules:
        return None
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    return getattr(signal, "SIG" + name.removeprefix("SIG"), None)


class SignalGuard:
    """Defer SIGTERM/SIGINT/SIGUSR1 to a step boundary; a second one exits at once.

    In ``immediate`` mode (the final evaluation: no state worth a new checkpoint) the first signal
    raises :class:`Interrupted` right away. Under submitit its preemption signal is deferred too and
    then handed to submitit's own handler (which requeues the job) once the checkpoint is on disk.
    """

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.requested: int | None = None
        self.immediate = False
        self.requeue_signal = _submitit_signal()
        self._previous: dict[int, object] = {}
        self._fault = self._parse_fault(os.environ.get(FAULT_ENV))

    @staticmethod
    def _parse_fault(text):
        if not text:
            return None
        sig, _, where = text.partition("@")
        sig, _, times = sig.partition("*")
        epoch, _, step = where.partition(":")
        return getattr(signal, sig), int(epoch) - 1, int(step), int(times or 1)

    def __enter__(self):
        if not hasattr(signal, "SIGUSR1") or not threading_main():  # signals: main thread, POSIX
            return self
        sigs = [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1] + ([self.requeue_signal] if self.requeue_signal else [])
        for s in sigs:
            self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, prev in self._previous.items():
            signal.signal(s, prev)
        self._previous.clear()

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.requested is not None:  # the second signal: no new checkpoint, out now
            sys.stderr.write(f"advrw: {name} again: exiting at once without saving (last complete checkpoint in "
                             f"{self.run_dir} is intact)\n")
            sys.stderr.flush()
            os._exit(128 + signum)
        self.requested = signum
        if self.immediate:
            raise Interrupted(f"{name} during the final evaluation: training is complete in {self.run_dir}/last.pt; "
                              f"finish the evaluation with: {resume_command(self.run_dir)}")
        log.info("%s received: finishing the current step, then saving a checkpoint", name)

    def fault_point(self, epoch: int, step: int) -> None:
        if self._fault and self._fault[1:3] == (epoch, step):
            for _ in range(self._fault[3]):
                os.kill(os.getpid(), self._fault[0])

    def hand_over(self) -> None:
        """After the checkpoint: submitit's signal goes to submitit's handler (requeue); others stop here."""
        prev = self._previous.get(self.requested)
        if self.requested == self.requeue_signal and callable(prev):
            log.info("preemption checkpoint saved; handing over to submitit to requeue this job")
            prev(self.requested, None)


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


# ------------------------------------------------------------------------------------- non-finite
LOSS, LOGITS, SAMPLE_W = 1, 2, 4
_NAMES = {LOSS: "loss", LOGITS: "logits (clean or adversarial)", SAMPLE_W: "per-example weights"}


class FiniteWatch:
    """First non-finite step of the epoch, kept on the device (no host sync per step).

    A forward hook flags non-finite model outputs (every forward: the attack's and the loss's);
    :meth:`step` folds the loss, those logits and the scheme's weights into ``first``/``code``.
    """

    def __init__(self, model: torch.nn.Module, device):
        self.device = device
        self._logits_bad = torch.zeros((), dtype=torch.bool, device=device)
        self.reset()
        self._hook = model.register_forward_hook(self._on_forward)
        self.model = model

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


def nonfinite_tensors(obj, prefix: str = "") -> list[str]:
    """Names of floating tensors holding nan/inf anywhere in a nested checkpoint payload."""
    bad = []
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() and not bool(torch.isfinite(obj).all()):
            bad.append(prefix or "tensor")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            bad += nonfinite_tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            bad += nonfinite_tensors(v, f"{prefix}[{i}]")
    return bad


# ------------------------------------------------------------------------------------ epoch sums
class EpochSums:
    """The running sums behind one epoch record; :meth:`state` is what a mid-epoch checkpoint holds."""

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


# ------------------------------------------------------------------------------------- run state
class RunState:
    """Resume, checkpoint and stop policy of one training run.

    Lifecycle: ``RunState.open(cfg, run_dir, resume_config)`` (before data is built) ->
    ``attach(...)`` (model, optimizer, scheduler, generator, data) -> per step ``after_step`` ->
    per epoch ``begin_epoch``/``end_epoch`` -> ``finished_training()`` (final evaluation).
    """

    def __init__(self, cfg, run_dir: Path, resumed: dict | None, source: Path | None):
        self.cfg, self.run_dir, self.resumed, self.source = cfg, Path(run_dir), resumed, source
        self.start_epoch = int(resumed["epoch"]) if resumed else 0
        self.best_robust = float(resumed.get("best_robust", -1.0)) if resumed else -1.0
        self.class_sums = list(resumed.get("class_weight_sums", [])) if resumed else []
        self.position = resumed.get("position") if resumed else None
        self.extra: dict = {}  # more checkpoint keys (e.g. a W&B run id, hardware settings)
        self.guard = SignalGuard(self.run_dir)
        self.watch: FiniteWatch | None = None
        self.ema = None  # advrw.methods.ema.ModelEMA, when the run averages its weights
        self.saved_last = (self.run_dir / "last.pt") if resumed else None

    # ---------------------------------------------------------------- opening (before any data)
    @classmethod
    def open(cls, cfg, run_dir: Path, resume_config) -> "RunState":
        """Read ``resume=`` (or an interrupted checkpoint in ``run_dir`` itself) and return the run state.

        ``resume_config(cfg, saved)`` merges the command line into the checkpoint's config.
        """
        run_dir = Path(run_dir)
        resumed, source = None, None
        if cfg.resume:
            path = resume_path(cfg.resume)
            resumed = ckpt_io.read(path)
            if "config" not in resumed or "optimizer" not in resumed:
                raise AdvrwError(f"resume={cfg.resume}: {path} is not an advrw training checkpoint "
                                 "(no config/optimizer)")
            cfg = resume_config(cfg, resumed)
            source = path
        elif (run_dir / "last.pt").exists():
            saved = cls._interrupted_here(cfg, run_dir)
            if saved is None:
                raise AdvrwError(f"{run_dir} already holds a run (last.pt): pass resume={run_dir} or choose a new dir")
            resumed, source = saved, run_dir / "last.pt"
            log.info("continuing the interrupted run in %s (%s)", run_dir, saved["interrupted"])
        state = cls(cfg, run_dir, resumed, source)
        if resumed is not None:
            resumed["path"] = str(source)
        return state

    @staticmethod
    def _interrupted_here(cfg, run_dir: Path) -> dict | None:
        """A requeued job (same command, same dir): continue only from a signal checkpoint of this config."""
        from omegaconf import OmegaConf

        try:
            saved = ckpt_io.read(run_dir / "last.pt")
        except AdvrwError:
            return None
        if not saved.get("interrupted") or "config" not in saved:
            return None
        now = OmegaConf.to_container(cfg, resolve=True)
        skip = {"resume", "stop_after", "device", "progress", "checkpoint_every", "logger"}
        same = {k: v for k, v in now.items() if k not in skip} == \
               {k: v for k, v in saved["config"].items() if k not in skip}
        return saved if same else None

    def prepare_dir(self) -> None:
        """Stale temp files out; a resumed run's new dir gets its checkpoints and trimmed records."""
        dirs = {self.run_dir.resolve()} | ({self.source.parent.resolve()} if self.resumed is not None else set())
        for d in dirs:
            for p in ckpt_io.remove_stale_temps(d):
                log.info("removed %s left by an interrupted save", p)
        if self.resumed is None:
            return
        src_dir = self.source.parent
        if src_dir.resolve() != self.run_dir.resolve():
            _link_or_copy(self.source, self.run_dir / "last.pt")
            if (src_dir / "best.pt").exists():
                _link_or_copy(src_dir / "best.pt", self.run_dir / "best.pt")
        self._trim_metrics(src_dir / "metrics.jsonl", self.run_dir / "metrics.jsonl", self.start_epoch)

    @staticmethod
    def _trim_metrics(src: Path, dst: Path, epoch: int) -> None:
        """Records up to the checkpoint's epoch only: each epoch appears once after a resume."""
        if not src.exists():
            return
        keep = []
        for line in src.read_text().splitlines():
            try:
                if int(json.loads(line)["epoch"]) <= epoch:
                    keep.append(line)
            except (ValueError, KeyError, TypeError):
                continue  # a line cut by a kill mid-write
        tmp = dst.with_name(dst.name + ".tmp")
        tmp.write_text("".join(x + "\n" for x in keep))
        os.replace(tmp, dst)

    def completed_results(self) -> dict | None:
        """A resumed run whose training and evaluation are both done: its results (nothing to run)."""
        if self.resumed is None or self.position or self.start_epoch < int(self.cfg.schedule.epochs):
            return None
        res = self.source.parent / "results.json"
        if not res.exists():
            return None
        log.info("run %s is complete (epoch %d of %d); its results are in %s", self.source.parent,
                 self.start_epoch, int(self.cfg.schedule.epochs), res)
        return json.loads(res.read_text())

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
        """Everything a checkpoint holds (the one place it is built)."""
        return {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(), "rng": ckpt_io.rng_state(self.gen), "epoch": epoch,
                "position": position, "interrupted": interrupted, "best_robust": self.best_robust,
                "config": self.config, "choices": self.choices, "run_info": self.info,
                "class_weight_sums": self.class_sums, "num_classes": self.data.num_classes,
                "classes": self.data.classes, **({"ema": self.ema.state_dict()} if self.ema is not None else {}),
                **self.extra}

    def save(self, name: str, payload: dict, epoch: int, step: int | None = None) -> Path:
        """Atomic save that never writes a non-finite tensor (BN running stats included)."""
        bad = nonfinite_tensors({"model": payload["model"], "optimizer": payload["optimizer"]})
        if bad:
            raise self._nonfinite(epoch, step, f"the weights ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})")
        path = self.run_dir / name
        ckpt_io.save(path, payload)
        if name == "last.pt":
            self.saved_last = path
        return path

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
            what = " and ".join(n for b, n in _NAMES.items() if code & b)
            raise self._nonfinite(epoch, step + 1, what)  # steps counted from 1, as in the signal line

    def end_epoch(self, epoch: int) -> None:
        """After the epoch's record: last.pt on schedule, then a pending signal stops the run."""
        last = epoch + 1 == self.stop_epoch
        if (epoch + 1) % int(self.cfg.checkpoint_every) == 0 or last or self.guard.requested is not None:
            interrupted = None if self.guard.requested is None or last else signal.Signals(self.guard.requested).name
            self.save("last.pt", self.payload(epoch + 1, interrupted=interrupted), epoch)
        if self.guard.requested is not None and not last:
            self._stop(epoch + 1, None, f"the end of epoch {epoch + 1}", saved=True)

    def _stop(self, epoch: int, position: dict | None, where: str, saved: bool = False) -> None:
        name = signal.Signals(self.guard.requested).name
        if not saved:
            self.save("last.pt", self.payload(epoch, position=position, interrupted=name), epoch)
        self.guard.hand_over()  # submitit requeues (exits) here
        raise Interrupted(f"{name}: stopped at {where}, checkpoint {self.run_dir / 'last.pt'}; "
                          f"continue with: {resume_command(self.run_dir)}")

    def _nonfinite(self, epoch: int, step: int | None, what: str) -> NonFiniteError:
        lr = self.opt.param_groups[0]["lr"]
        hp = ""
        if self.spec is not None:
            hp = f", weighting={self.spec.scheme} {self.spec.scheme_hparams}"
            if self.spec.defense_kwargs:
                hp += f", defense={self.spec.defense} {self.spec.defense_kwargs}"
        kept = f"last finite checkpoint: {self.saved_last}" if self.saved_last and self.saved_last.exists() \
            else "no checkpoint was written"
        at = f"epoch {epoch + 1}" + (f", step {step}" if step is not None else "")
        return NonFiniteError(f"non-finite values: {what} became nan/inf at {at} (lr={lr:g}{hp}); "
                              f"training stopped, {kept}")

    def finished_training(self) -> None:
        """From here (the final evaluation) a signal stops the run at once: last.pt is complete."""
        self.guard.immediate = True
        if self.watch is not None:
            self.watch.close()


def resume_path(resume: str) -> Path:
    p = Path(resume).expanduser()
    if p.is_dir():
        p = p / "last.pt"
    if not p.exists():
        raise AdvrwError(f"resume={resume} has no checkpoint: expected a run dir with last.pt or a .pt file")
    return p


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard link when possible (free; saves replace files, never rewrite them), else copy."""
    if dst.exists() and dst.samefile(src):
        return
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)

