"""The few-step hooks of fm_torch/train.py (the twin of fm_numpy/fewstep.py).

Per step, in the order of the generator's draws (idx, t, x0, sinkhorn's uniforms, label
dropout, MeanFlow's (r, t)):
    x0, t = hooks.couple(x0, x1, y, t, gen, idx)  # reflow: the pairs' x0[idx]; then the
                                                   # perm of the noise; t = 0 when distilling
    loss, mse = hooks.meanflow_loss(...)        # objective "meanflow" only
    hooks.step_done()
`couple` starts the step's clock (after the draws); the coupling's share of the step
time goes to the progress bar ("cpl") and to timing.json at every checkpoint (rank 0).
"""

import time

import torch

from fm_numpy.fewstep import FewStepHooks as _NumpyHooks

__all__ = ["FewStepHooks"]


class FewStepHooks(_NumpyHooks):
    """fm_numpy's bookkeeping (share, postfix) with torch couplings, noise and MeanFlow."""

    def __init__(self, config, out, rank=0, world_size=1):
        super().__init__(config, None, out)
        self.rank = rank
        self.x0_all = None
        if config["pairs"] is not None:
            from fm_torch.data import shard
            from fm_torch.reflow import pair_tensors

            x0, _, _ = pair_tensors(config["pairs"])
            self.x0_all, _ = shard(x0, None, rank, world_size)
        self._start = None

    def couple(self, x0, x1, y, t, gen, idx=None):
        self._start = time.perf_counter()
        if self.x0_all is not None:
            x0 = self.x0_all[idx]  # the teacher's noise of the drawn pairs
        if self.config["distill"]:
            t = torch.zeros_like(t)  # one-step student: x1 = x0 + v(x0, 0)
        if self.config["coupling"] == "independent":
            return x0, t
        from fm_torch.coupling import couple

        start = time.perf_counter()
        perm = couple(self.config["coupling"], x0, x1, y, gen, self.config["coupling_block"])
        self.coupling_s += time.perf_counter() - start
        return x0[perm], t

    def meanflow_loss(self, net, path, x1, y, x0, gen, device):
        from fm_torch.meanflow import meanflow_loss, sample_r_t

        r, t = sample_r_t(gen, len(x1), self.config["meanflow_ratio"], dtype=x1.dtype)
        return meanflow_loss(net, path, x1, y, x0, r.to(device), t.to(device),
                             norm_p=self.config["meanflow_norm_p"])

    def step_done(self, seconds=None):
        super().step_done(time.perf_counter() - self._start if seconds is None else seconds)

    def save_timing(self):
        if self.rank == 0:
            super().save_timing()


