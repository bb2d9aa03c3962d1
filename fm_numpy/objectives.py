"""Training objectives for fm_numpy/loop.py: pure functions of (net, batch) once their draws
are made.

batch is a dict with x0, x1 (B, D), y (B,) or None, t (B,) (and r (B,) for MeanFlow).
Each objective has
    check(net)                  ValueError before step 1 when the net lacks what it needs
    prepare(batch, draws)       its own draws, after the label dropout (MeanFlow's r, t)
    loss_and_dv(net, batch)     (loss: float, dv): dv = dL/d(output of the net's latest
                                forward or jvp), so the loop runs opt.step(net.backward(dv))

FlowMatching(path): xt = alpha_t x1 + sigma_t x0, ut = d_alpha_t x1 + d_sigma_t x0,
    L = mean over batch and coordinates of (v_theta(xt, t, y) - ut)^2,  dL/dv = 2 (v - ut)/(B D).
MeanFlow(path, ratio, norm_p): the average-velocity loss of fm_numpy/meanflow.py; (r, t) are
    two sorted logit-normal times with t = r except for a fraction `ratio`.
"""

import numpy as np

from fm_numpy.meanflow import MEANFLOW_DEFAULTS, draw_r_t, meanflow_loss

__all__ = ["FlowMatching", "MeanFlow"]


def _needs(net, names, what):
    missing = [n for n in names if not callable(getattr(net, n, None))]
    if missing or not isinstance(getattr(net, "params", None), dict):
        lacks = ", ".join(f"net.{n}" for n in missing) or "net.params (a dict of arrays)"
        raise ValueError(f"{what} needs {lacks} (see the network protocol in fm_numpy/loop.py)")


class FlowMatching:
    """Conditional flow matching on an affine path (module docstring)."""

    name = "fm"

    def __init__(self, path):
        self.path = path

    def check(self, net):
        _needs(net, ("forward", "backward"), "FlowMatching")

    def prepare(self, batch, draws):
        pass  # no draws of its own

    def loss_and_dv(self, net, batch):
        t = batch["t"]
        xt, ut = self.path.sample(batch["x0"], batch["x1"], t)  # (B, D) each
        v = net.forward(xt, t, batch["y"])  # (B, D)
        diff = v - ut  # (B, D)
        loss = float(np.mean(diff * diff))
        diff *= 2.0 / diff.size  # dL/dv
        return loss, diff


class MeanFlow:
    """The MeanFlow objective (Geng et al. 2025) on an affine path; needs net.jvp."""

    name = "meanflow"

    def __init__(self, path, ratio=MEANFLOW_DEFAULTS["ratio"],
                 norm_p=MEANFLOW_DEFAULTS["norm_p"]):
        self.path, self.ratio, self.norm_p = path, ratio, norm_p

    def check(self, net):
        _needs(net, ("forward", "backward", "jvp"), "MeanFlow")

    def prepare(self, batch, draws):
        x1 = batch["x1"]
        batch["r"], batch["t"] = draw_r_t(draws, len(x1), self.ratio, dtype=x1.dtype)

    def loss_and_dv(self, net, batch):
        return meanflow_loss(net, self.path, batch["x0"], batch["x1"], batch["y"], batch["r"],
                             batch["t"], norm_p=self.norm_p)
