"""Stop cleanly on the signals a cluster sends before it kills or requeues a job.

Slurm sends SIGTERM when a job is cancelled, pre-empted or reaches its time limit (then SIGKILL
after KillWait), and `--signal=USR1@<s>` (submitit: SIGUSR2) some time before the limit. While
a `Preemption` is installed these signals are only recorded; the trainer finishes its current
step, writes a checkpoint, restores the previous handlers and calls `hand_over`, which lets the
handler of the signal (submitit's checkpoint-and-requeue) act, then exits with status 128 + the
signal number.

Ctrl-C (SIGINT) too, for a `Preemption(..., interrupt=True)`: the first stops the run the same way (exit
status 130), a second one raises KeyboardInterrupt at once. It is not passed on to other processes: a
terminal sends it to every process of its foreground group.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import NoReturn

from stklia.core.errors import InputError

log = logging.getLogger(__name__)


def exit_status(signum: int) -> int:
    """The status of a run stopped by signal `signum`: 128 + signum, as a shell reports a killed process."""
    return 128 + signum


class Preemption:
    """Records the configured signals (names such as SIGTERM) while installed (or used as a context manager).

    `forward` gives the pids to pass each signal on to (processes this one started itself).
    """

    def __init__(self, names: Sequence[str], forward: Callable[[], Iterable[int]] | None = None,
                 interrupt: bool = False):
        try:
            self.signals = [signal.Signals[name] for name in names]
        except KeyError as err:
            raise InputError("config", f"preempt_signals: unknown signal {err} (use names like SIGTERM)") from None
        if interrupt and signal.SIGINT not in self.signals:
            self.signals.append(signal.SIGINT)
        self.forward = forward
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, object] = {}

    def install(self) -> None:
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._record)

    def restore(self) -> None:
        """Put back the handlers that were there before install()."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def __enter__(self) -> Preemption:
        self.install()
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()

    def _record(self, signum: int, frame: object) -> None:
        if signum == signal.SIGINT and self.received is not None:
            raise KeyboardInterrupt  # Ctrl-C while stopping: stop at once
        if self.received is None:
            self.received = signal.Signals(signum)
            log.warning("got %s: stopping after the current step, with a checkpoint%s", self.received.name,
                        " (Ctrl-C again to stop at once, without one)" if signum == signal.SIGINT else "")
        if signum == signal.SIGINT:
            return
        for pid in self.forward() if self.forward else ():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    @contextlib.contextmanager
    def sheltering_children(self) -> Iterator[None]:
        """Child processes started inside (data loader workers) have the signals blocked.

        Slurm signals every process of a job step: a worker killed by SIGTERM would make the data
        loader raise in the middle of the step that is to be finished. Workers end with the loader.
        """
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, self.signals)
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def hand_over(signum: int) -> NoReturn:
    """After the checkpoint, handlers restored: run the one for `signum` (e.g. submitit's requeue), then exit."""
    handler = signal.getsignal(signum)
    log.warning("stopped by %s", signal.Signals(signum).name)
    if callable(handler) and handler is not signal.default_int_handler:  # that one raises KeyboardInterrupt
        handler(signum, None)
    raise SystemExit(exit_status(signum))
