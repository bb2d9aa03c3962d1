"""Few-step training settings (re-exported from fm_numpy/train_config.py) and FewStepHooks.

fm_numpy's loop no longer uses FewStepHooks: couplings, MeanFlow and distillation are the
objects of fm_numpy/coupling.py, objectives.py and schedules.Fixed, handed to
fm_numpy/loop.py by train.py. The hooks stay for fm_torch/fewstep.py, which subclasses them.

The older loop called, per step (in this order of random draws: x1, t, x0, then
sinkhorn's uniforms, the label dropout, then MeanFlow's (r, t)):
    x0, t = hooks.couple(x0, x1, y, t, rng, data)  # reflow: the pairs' x0; then the perm
                                                    # of the noise; t = 0 when distilling
    loss, dL/du = hooks.meanflow_loss(...)      # objective "meanflow" only
    hooks.step_done(seconds)                    # time of the whole step
The coupling's share of the step time is shown in the progress bar ("cpl") and written to
timing.json in the run folder at every checkpoint.
"""

import os
import time

from fm_numpy.io import save_json
from fm_numpy.train_config import OBJECTIVES, check_fewstep_settings

__all__ = ["OBJECTIVES", "check_fewstep_settings", "FewStepHooks"]



class FewStepHooks:
    """Per-run state of the hooks (see the module docstring)."""

    def __init__(self, config, path, out):
        self.config, self.path, self.out = config, path, out
        self.meanflow = config["objective"] == "meanflow"
        self.coupling_s = 0.0
        self.step_s = 0.0
        self.steps = 0

    def couple(self, x0, x1, y, t, rng, data=None):
        if self.config["pairs"] is not None:
            x0 = data.x0[data.last_idx]  # the teacher's noise of the drawn pairs
        if self.config["distill"]:
            t = t * 0  # one-step student: regress x1 - x0 at t = 0 (x1 = x0 + v(x0, 0))
        if self.config["coupling"] == "independent":
            return x0, t
        from fm_numpy.coupling import couple

        start = time.perf_counter()
        perm = couple(self.config["coupling"], x0, x1, y, rng, self.config["coupling_block"])
        self.coupling_s += time.perf_counter() - start
        return x0[perm], t

    def meanflow_loss(self, model, x0, x1, y, rng):
        from fm_numpy.meanflow import meanflow_loss, sample_r_t

        r, t = sample_r_t(rng, len(x1), self.config["meanflow_ratio"], dtype=x1.dtype)
        return meanflow_loss(model, self.path, x0, x1, y, r, t,
                             norm_p=self.config["meanflow_norm_p"])

    def step_done(self, seconds):
        self.step_s += seconds
        self.steps += 1

    @property
    def share(self):
        return self.coupling_s / self.step_s if self.step_s > 0 else 0.0

    def postfix(self):
        if self.config["coupling"] == "independent":
            return {}
        return {"cpl": f"{100 * self.share:.0f}%"}

    def save_timing(self):
        """timing.json: seconds in the coupling and in whole steps since this process began."""
        if self.config["coupling"] == "independent" and not self.meanflow:
            return
        save_json(os.path.join(self.out, "timing.json"), {
            "coupling": self.config["coupling"], "steps_timed": self.steps,
            "coupling_s": self.coupling_s, "step_s": self.step_s,
            "coupling_share": self.share})
