"""SIGTERM/SIGINT/SIGUSR1 (and submitit's preemption signal) during a training run.

No signal ever raises inside library code: the handler only records it. While training, the loop
stops at the next step boundary (a mid-epoch checkpoint, exit 75); during the final evaluation,
figures and W&B finishing (:meth:`SignalGuard.defer`) it stops at the next safe point -- after an
attack (:meth:`SignalGuard.between_attacks`) or a phase. A second signal exits at once (128+N);
saves are atomic, so the last complete checkpoint survives.

Fault injection for tests and drills: ``ADVRW_FAULT_SIGNAL="SIGTERM@2:5"`` sends SIGTERM to this
process after step 5 (0-based) of epoch 2 (1-based); ``"SIGTERM*2@2:5"`` sends it twice; the
phases ``SIGTERM@eval``, ``SIGTERM@figures`` and ``SIGTERM@finish`` send it as that phase begins.
A resumed run that starts past that point never sends it again.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path

from advrw.core.errors import Interrupted, resume_command

log = logging.getLogger("advrw.training.signals")

FAULT_ENV = "ADVRW_FAULT_SIGNAL"


def _submitit_signal() -> int | None:
    """The preemption/timeout signal submitit's job handler listens to, when running under submitit."""
    if not any(k.startswith(("SUBMITIT_", "SLURM_JOB_ID")) for k in os.environ) or "submitit" not in sys.modules:
        return None
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    return getattr(signal, "SIG" + name.removeprefix("SIG"), None)


def _parse_fault(text: str | None):
    if not text:
        return None
    sig, _, where = text.partition("@")
    sig, _, times = sig.partition("*")
    epoch, _, step = where.partition(":")
    point = (int(epoch) - 1, int(step)) if step else epoch
    return getattr(signal, sig), point, int(times or 1)


class SignalGuard:
    """Record the first signal; the loop acts on it at its next safe point. A second one exits now."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.requested: int | None = None
        self.phase: str | None = None  # None while training; else the deferred phase's name
        self.requeue_signal = _submitit_signal()
        self._previous: dict[int, object] = {}
        self._fault = _parse_fault(os.environ.get(FAULT_ENV))

    def __enter__(self):
        if not hasattr(signal, "SIGUSR1") or threading.current_thread() is not threading.main_thread():
            return self  # signals: main thread, POSIX
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
            last = self.run_dir / "last.pt"
            kept = (f"the last complete checkpoint {last} is intact" if last.exists()
                    else f"no complete checkpoint exists yet in {self.run_dir}: the run starts again from epoch 1")
            sys.stderr.write(f"advrw: {name} again: exiting at once without saving ({kept})\n")
            sys.stderr.flush()
            os._exit(128 + signum)
        self.requested = signum
        if self.phase is None:
            log.info("%s received: finishing the current step, then saving a checkpoint", name)
        else:
            log.info("%s received during %s: stopping at the next safe point", name, self.phase)

    @property
    def name(self) -> str:
        return signal.Signals(self.requested).name

    # ------------------------------------------------------------------ fault injection
    def _fire(self, point) -> None:
        if self._fault and self._fault[1] == point:
            for _ in range(self._fault[2]):
                os.kill(os.getpid(), self._fault[0])

    def fault_point(self, epoch: int, step: int) -> None:
        self._fire((epoch, step))

    # ------------------------------------------------------------------ after training
    def defer(self, phase: str, point: str) -> None:
        """From here on a signal stops the run at the next :meth:`check` (training is saved).

        ``point`` names the phase for fault injection (``eval``, ``figures``, ``finish``)."""
        self.phase = phase
        self._fire(point)
        self.check()

    def check(self) -> None:
        """Raise :class:`Interrupted` if a signal arrived during a deferred phase."""
        if self.requested is not None and self.phase is not None:
            raise Interrupted(f"{self.name} during {self.phase}: training is saved in {self.run_dir / 'last.pt'}; "
                              f"finish with: {resume_command(self.run_dir)}")

    def between_attacks(self) -> None:
        """The final evaluation's callback after each attack (its result saved): stop here if asked."""
        self.check()

    def hand_over(self) -> None:
        """After the checkpoint: submitit's signal goes to submitit's handler (requeue); others stop here."""
        prev = self._previous.get(self.requested)
        if self.requested == self.requeue_signal and callable(prev):
            log.info("preemption checkpoint saved; handing over to submitit to requeue this job")
            prev(self.requested, None)
