"""Training objectives handed to the loop (fm_torch/loop.py): pure functions of the batch.

A batch is a dict of x0, x1 (B, ...), y ((B,) or None, label dropout applied) and t (B,);
`objective.prepare(batch, draws)` adds the objective's own draws (MeanFlow's (r, t)) after
the loop's, and `objective.loss(net, batch)` returns the scalar to backpropagate, or
(loss, logged) when loss.csv should record another number (MeanFlow: the unweighted mse).
`objective.check(net)` raises ValueError before step 1 when the net lacks what the
objective needs; `mixed_precision` says whether the loss may run under bf16 autocast.

    FlowMatching(path)          L = mean (v_theta(xt, t, y) - ut)^2, (xt, ut) = path.sample(...)
    MeanFlow(path, ratio, norm_p)  the average-velocity loss (fm_torch/meanflow.py) at
                                (r, t): sorted logit-normal(0.4, 1) pair, t = r except for a
                                fraction `ratio`; draws "mf_z" (2, B) and "mf_keep" (B,), float64
    DDPM(alphas_cumprod, prediction)   k = floor(N t) (N = len(abar)), x_dm = sqrt(abar_k) x1
                                + sqrt(1 - abar_k) x0, L = mean (net(x_dm, k / N, y) - target)^2
    Diff2Flow(alphas_cumprod, prediction, path)   the flow-matching loss of the diffusion net
                                seen as a CondOT velocity (DiffusionVelocity)

(fm_torch/train_diffusion.py documents the diffusion modes; it and fm_torch/train.py
re-export these names.)
"""

import inspect

import torch
from torch.nn import functional as F

from fm_torch.diffusion import (
    DiffusionToFlow,
    TimestepModel,
    diffusion_sample,
    output_from_x1_x0,
    scale_from_flow_time,
)
from fm_torch.meanflow import meanflow_loss
from fm_torch.paths import expand_t

__all__ = ["flow_matching_loss", "diffusion_loss", "DiffusionVelocity", "FlowMatching",
           "MeanFlow", "DDPM", "Diff2Flow"]


def flow_matching_loss(model, path, x1, y, x0, t):
    """L = mean((v_theta(xt, t, y) - ut)^2) with (xt, ut) = path.sample(x0, x1, t)."""
    xt, ut = path.sample(x0, x1, t)  # (B, ...) each
    v = model(xt, t, y)  # (B, ...)
    # Under bf16 autocast v is bf16: take the loss in float32 at least, float64 for float64 data.
    dtype = torch.promote_types(ut.dtype, torch.float32)
    return F.mse_loss(v.to(dtype), ut.to(dtype))


def diffusion_loss(model, x0, x1, timestep, alphas_cumprod, prediction="epsilon", y=None):
    """L = mean (model(x_dm, k, y) - target)^2 at integer steps k, shape (B,).

    x_dm = a x1 + b x0 with (a, b) = sqrt(abar_k), sqrt(1 - abar_k), and the target is
    the network output of the prediction type for the true (x1, x0):
    fm_torch.diffusion.output_from_x1_x0 (epsilon: x0; x0: x1; v: a x0 - b x1).
    For epsilon it is fm_torch.diffusion.ddpm_loss.
    """
    abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    x_dm = diffusion_sample(x0, x1, timestep, abar)  # (B, ...)
    abar_k = expand_t(abar[torch.as_tensor(timestep).cpu()].to(x1.dtype).to(x1.device), x1)
    target = output_from_x1_x0(prediction, x1, x0, torch.sqrt(abar_k), torch.sqrt(1 - abar_k))
    out = model(x_dm, timestep, y)  # (B, ...)
    # under bf16 autocast out is bf16: the loss in float32 at least (as flow_matching_loss)
    dtype = torch.promote_types(target.dtype, torch.float32)
    return torch.mean((out.to(dtype) - target.to(dtype)) ** 2)


class DiffusionVelocity(torch.nn.Module):
    """A diffusion network net(x_dm, k / N, y) as the CondOT velocity v(x, t, y).

    v = DiffusionToFlow(TimestepModel(net, N), abar, prediction)(x, t, y): the step
    k(t) (clamped to [0, N-1]), x_dm = s(t) x and v = x1_hat - x0_hat (docs/diffusion.md).
    Its flow starts where DDIM does: at t_min = t_{N-1} from x = x_T / s(t_min)
    (flow_sample); the state_dict is the network's under "net.".
    """

    def __init__(self, net, alphas_cumprod, prediction="epsilon"):
        super().__init__()
        self.net = net
        self.timestep_model = TimestepModel(net, len(alphas_cumprod))
        self.flow = DiffusionToFlow(self.timestep_model, alphas_cumprod, prediction)
        self.prediction = prediction
        self.t_min = self.flow.t_min

    @property
    def alphas_cumprod(self):
        return self.flow.alphas_cumprod

    def forward(self, x, t, y=None):
        if torch.is_tensor(t):
            t = t.detach().cpu()  # the time map runs on float64 CPU tables
        return self.flow(x, t, y)

    @torch.no_grad()
    def flow_sample(self, x_T, y=None, guidance=1.0, method="midpoint", steps=20,
                    return_nfe=False):
        """The flow ODE from x = x_T / s(t_min) at t_min to t = 1, uniform grid of `steps`.

        x_T ~ N(0, I) is the diffusion state at step N-1 (as DDIM takes it). Returns the
        trajectory (steps + 1, *x_T.shape) in flow variables [and the NFE].
        """
        from fm_torch.solvers import ClassifierFreeGuidance, odeint

        if int(steps) < 1:
            raise ValueError(f"steps must be a positive integer, got {steps}")
        v = ClassifierFreeGuidance(self, y, guidance) if y is not None else (
            lambda x, t: self(x, t, None))
        t_grid = torch.linspace(self.t_min, 1, int(steps) + 1, dtype=torch.float64)
        x_start = x_T / float(scale_from_flow_time(self.t_min))  # x_T at step N-1
        return odeint(v, x_start, t_grid, method=method, return_nfe=return_nfe)


class FlowMatching:
    """L = mean (v_theta(xt, t, y) - ut)^2 on the affine `path` (no draws of its own)."""

    mixed_precision = True

    def __init__(self, path):
        self.path = path

    def check(self, net):
        pass

    def prepare(self, batch, draws):
        pass

    def loss(self, net, batch):
        return flow_matching_loss(net, self.path, batch["x1"], batch["y"], batch["x0"],
                                  batch["t"])


class MeanFlow:
    """The MeanFlow loss (fm_torch.meanflow.meanflow_loss); loss.csv logs the unweighted mse.

    Runs in full precision (mixed_precision False): the JVP target is a small difference.
    """

    mixed_precision = False

    def __init__(self, path, ratio=0.25, norm_p=1.0, mu=0.4, sigma=1.0):
        self.path, self.ratio, self.norm_p = path, float(ratio), float(norm_p)
        self.mu, self.sigma = float(mu), float(sigma)

    def check(self, net):
        if getattr(net, "mean_flow", None) is False:
            raise ValueError("MeanFlow needs a mean-flow network (a second time input r); "
                             "this one was built with mean_flow=False")
        params = inspect.signature(net.forward).parameters
        if "r" not in params and not any(p.kind == p.VAR_KEYWORD for p in params.values()):
            raise ValueError("MeanFlow needs a network with forward(x, t, y=None, r=None) "
                             "(a second time input r)")

    def prepare(self, batch, draws):
        """(r, t) as fm_torch.meanflow.sample_r_t, from the draws "mf_z" and "mf_keep"."""
        x1 = batch["x1"]
        B = len(x1)
        z = draws.normal("mf_z", (2, B), torch.float64)  # (2, B)
        s = torch.sigmoid(self.mu + self.sigma * z)  # (2, B) in (0, 1)
        r, t = torch.minimum(s[0], s[1]), torch.maximum(s[0], s[1])  # (B,) each
        keep = draws.uniform("mf_keep", (B,), torch.float64) < self.ratio  # (B,) r != t
        t = torch.where(keep, t, r)
        batch["r"] = r.to(x1.dtype).to(x1.device)
        batch["t"] = t.to(x1.dtype).to(x1.device)

    def loss(self, net, batch):
        return meanflow_loss(net, self.path, batch["x1"], batch["y"], batch["x0"], batch["r"],
                             batch["t"], norm_p=self.norm_p)


class DDPM:
    """A discrete-time DDPM with N = len(alphas_cumprod) steps, k = floor(N t) from the loop's t."""

    mixed_precision = True

    def __init__(self, alphas_cumprod, prediction="epsilon"):
        self.alphas_cumprod, self.prediction = alphas_cumprod, prediction

    def check(self, net):
        pass

    def prepare(self, batch, draws):
        pass

    def loss(self, net, batch):
        n = len(self.alphas_cumprod)
        k = torch.clamp((batch["t"] * n).long(), max=n - 1)  # (B,) uniform on 0..N-1
        return diffusion_loss(TimestepModel(net, n), batch["x0"], batch["x1"], k,
                              self.alphas_cumprod, self.prediction, batch["y"])


class Diff2Flow:
    """Flow matching of the diffusion net as a CondOT velocity (Schusterbauer et al. 2025).

    For epsilon prediction t maps to t_min + (1 - t_min) t: v = (x - x0_hat) / t has no
    value at t = 0.
    """

    mixed_precision = True

    def __init__(self, alphas_cumprod, prediction, path):
        self.alphas_cumprod, self.prediction, self.path = alphas_cumprod, prediction, path

    def check(self, net):
        pass

    def prepare(self, batch, draws):
        pass

    def loss(self, net, batch):
        v = DiffusionVelocity(net, self.alphas_cumprod, self.prediction)
        t = batch["t"]
        if self.prediction == "epsilon":
            t = v.t_min + (1 - v.t_min) * t
        return flow_matching_loss(v, self.path, batch["x1"], batch["y"], batch["x0"], t)
