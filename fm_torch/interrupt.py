"""Stop training at a whole step on SIGINT or SIGTERM: fm_numpy.interrupt's DeferredStop.

The first signal sets `.requested`; the loop finishes its step, writes a checkpoint and
raises TrainingInterrupted. A second signal aborts at once. Signals are plain Python, so
both packages share one implementation (fm_torch may import fm_numpy).
"""

from fm_numpy.interrupt import STOP_SIGNALS, DeferredSigint, DeferredStop, TrainingInterrupted

__all__ = ["DeferredStop", "DeferredSigint", "TrainingInterrupted", "STOP_SIGNALS"]
