"""Stop training at a whole step on SIGINT (Ctrl-C) or SIGTERM (cluster preemption,
`docker stop`, torchrun forwarding): finish the step, write a checkpoint, then stop.

The first signal only sets `.requested` (and `.signal`, its name); the training loop reads it
between steps, so a checkpoint is never taken halfway through an optimizer update. A second
signal of either kind raises KeyboardInterrupt at once (the user insists: abort).
Signal handlers live in the main thread, so outside it DeferredStop does nothing.
"""

import signal
import threading

__all__ = ["DeferredStop", "DeferredSigint", "TrainingInterrupted", "STOP_SIGNALS"]

STOP_SIGNALS = tuple(s for s in (getattr(signal, "SIGINT", None),
                                 getattr(signal, "SIGTERM", None)) if s is not None)


class TrainingInterrupted(KeyboardInterrupt):
    """A signal stopped training after a whole step, and a checkpoint of it was written."""


class DeferredStop:
    """Context manager deferring SIGINT and SIGTERM to the next step boundary (module doc)."""

    def __init__(self, signals=STOP_SIGNALS):
        self.signals = tuple(signals)
        self.requested = False
        self.signal = None
        self._old = {}

    def __enter__(self):
        self.requested = False
        self.signal = None
        self._old = {}
        if threading.current_thread() is threading.main_thread():
            for signum in self.signals:
                self._old[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:  # the second signal: abort now, no checkpoint
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: aborted")
        self.requested = True
        self.signal = signal.Signals(signum).name

    def __exit__(self, *exc):
        for signum, old in self._old.items():
            signal.signal(signum, old)
        self._old = {}
        return False


# the old name (fm_torch/train.py and older callers import it from fm_numpy.train)
DeferredSigint = DeferredStop
