"""Few-step training: where its pieces live (docs/math.md, "Few-step generation").

The loop (fm_numpy/loop.py) takes them as objects, built by fm_numpy/train.py:
    coupling       fm_numpy.coupling: OT, OTClass, Sinkhorn (re-pair the noise per batch)
    objective      fm_numpy.objectives.MeanFlow (the average velocity u(z, r, t))
    reflow pairs   fm_numpy.sources.PairSource (fixed (x0, x1) pairs replace data and noise)
    distillation   fm_numpy.schedules.Fixed(0, base) (t = 0: one Euler step x0 + v(x0, 0))
The coupling's share of the step time goes to the progress bar ("cpl") and to timing.json
in the run folder (fm_numpy/train.py). The settings' names and checks are those of
fm_numpy/train_config.py, re-exported here for older callers (fm_torch, the CLIs).
"""

from fm_numpy.train_config import OBJECTIVES, check_fewstep_settings

__all__ = ["OBJECTIVES", "check_fewstep_settings"]
