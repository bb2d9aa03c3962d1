"""Few-step training in fm_torch: which objects the settings become (the twin of
fm_numpy/fewstep.py).

fm_torch/train.py's `build` turns the few-step settings into the pieces of the loop
(fm_torch/loop.py), which knows none of them by name:
    coupling "ot", "ot-class", "sinkhorn"  -> fm_torch.coupling.OT / OTClass / Sinkhorn
                                              (re-pairs the noise of each batch)
    objective "meanflow"                    -> fm_torch.objectives.MeanFlow (torch.func.jvp)
    pairs PATH                              -> fm_torch.data.PairSource (reflow pairs)
    distill                                 -> fm_torch.schedules.Fixed(0) time sampler
The coupling's share of the step time (the loop's TrainState.coupling_s / step_s) goes to
the progress bar ("cpl") and, with a coupling or MeanFlow, to timing.json at every
checkpoint (rank 0). The settings are checked by fm_numpy's check_fewstep_settings.
"""

from fm_numpy.fewstep import OBJECTIVES, check_fewstep_settings

__all__ = ["OBJECTIVES", "check_fewstep_settings"]
