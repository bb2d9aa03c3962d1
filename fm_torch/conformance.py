"""Tensor wrappers for the conformance kit: check torch callables with fm_numpy.conformance.

The checks live in fm_numpy/conformance/ (NumPy only). Each `wrap_<kind>` turns a torch
user's function into the NumPy one the check expects: arrays become float64 CPU tensors
on the way in and arrays again on the way out, and the kit's own callables (fields,
models) are handed over as torch callables. `check_<kind>` does both steps:

    from fm_torch.conformance import check_path
    report = check_path(my_torch_sample, "condot")

check_training_step hands the torch loss `TorchProbe`, an nn.Module forward(x, t=None, y=None,
r=None) whose output is the kit's probe output plus a slice of one zero parameter, so
autograd gives dL/d output of every call (also through torch.func.jvp, whose inputs are
unwrapped to record them). For check_likelihood the kit's field is rebuilt as
fm_torch.analytic.GaussianMixtureField (differentiable, so autograd divergences work) and
handed over without a divergence method.
"""

import numpy as np
import torch

from fm_numpy import conformance as _np_conformance

__all__ = ["to_tensor", "to_array", "wrap_path", "wrap_solver", "wrap_velocity",
           "wrap_likelihood", "wrap_guidance", "wrap_diffusion_to_flow", "WRAPPERS",
           "check_path", "check_solver", "check_velocity", "check_likelihood",
           "check_guidance", "check_diffusion_to_flow", "TorchProbe", "wrap_training",
           "wrap_time_sampling", "wrap_seeded", "wrap_prediction", "check_training_step",
           "check_time_sampling", "check_seeded", "check_prediction"]


def to_tensor(a):
    """An array (or float) as a float64 CPU tensor; integer arrays stay integer; None stays."""
    if a is None or isinstance(a, torch.Tensor):
        return a
    if isinstance(a, float):
        return a
    a = np.asarray(a)
    if np.issubdtype(a.dtype, np.integer):
        return torch.as_tensor(a)
    return torch.as_tensor(a, dtype=torch.float64)


def to_array(a):
    """A tensor (any device, with or without grad) as a NumPy array."""
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def _name(fn, wrapper):
    wrapper.__name__ = getattr(fn, "__name__", type(fn).__name__)
    return wrapper


def wrap_path(sample):
    """sample(x0, x1, t) on tensors -> the same on arrays."""
    def wrapped(x0, x1, t):
        xt, ut = sample(to_tensor(x0), to_tensor(x1), to_tensor(t))
        return to_array(xt), to_array(ut)
    return _name(sample, wrapped)


def _torch_field(v):
    """A NumPy field v(x, t) as a torch one (values only: no autograd through it)."""
    def field(x, t):
        return torch.as_tensor(v(to_array(x), to_array(t) if isinstance(t, torch.Tensor) else t),
                               dtype=x.dtype, device=x.device)
    return field


def wrap_solver(odeint):
    """odeint(v, x0, t_grid) on tensors (v a torch field) -> the same on arrays."""
    def wrapped(v, x0, t_grid):
        return to_array(odeint(_torch_field(v), to_tensor(x0), to_tensor(t_grid)))
    return _name(odeint, wrapped)


def wrap_velocity(v):
    """A trained torch field v(x, t) -> a NumPy one (evaluated without grad)."""
    def wrapped(x, t):
        with torch.no_grad():
            return to_array(v(to_tensor(x), t))
    return _name(v, wrapped)


class _TorchMixtureVelocity:
    """The kit's likelihood field as a differentiable torch callable (no divergence method)."""

    def __init__(self, mixture):
        from fm_torch.analytic import GaussianMixtureField

        self.field = GaussianMixtureField(mixture.means, mixture.covariances, mixture.weights)

    def __call__(self, x, t):
        return self.field(x, t)


def wrap_likelihood(log_likelihood):
    """log_likelihood(v, x1) on tensors (v a differentiable torch field) -> arrays."""
    def wrapped(v, x1):
        return to_array(log_likelihood(_TorchMixtureVelocity(v.mixture), to_tensor(x1)))
    return _name(log_likelihood, wrapped)


def wrap_guidance(guided):
    """guided(model, x, t, y, w) on tensors (model a torch callable) -> arrays."""
    def wrapped(model, x, t, y, w):
        def torch_model(x, t, y=None):
            out = model(to_array(x), to_array(t) if isinstance(t, torch.Tensor) else t,
                        None if y is None else to_array(y))
            return torch.as_tensor(out, dtype=x.dtype)
        return to_array(guided(torch_model, to_tensor(x), t, to_tensor(y), w))
    return _name(guided, wrapped)


def wrap_diffusion_to_flow(convert):
    """convert(model, alphas_cumprod, prediction) -> v, all in torch -> the NumPy version."""
    def wrapped(model, alphas_cumprod, prediction):
        def torch_model(x_dm, timestep, y=None):
            out = model(to_array(x_dm), to_array(timestep), y)
            return torch.as_tensor(out, dtype=x_dm.dtype)
        v = convert(torch_model, to_tensor(alphas_cumprod), prediction)

        def field(x, t):
            with torch.no_grad():
                return to_array(v(to_tensor(x), t))
        return field
    return _name(convert, wrapped)


def _plain(x):
    """The values of a tensor, also inside torch.func transforms and forward-mode AD."""
    from torch._C import _functorch as F
    from torch.autograd import forward_ad

    if not isinstance(x, torch.Tensor):
        return x
    while F.is_functorch_wrapped_tensor(x) or F.is_gradtrackingtensor(x):
        x = F.get_unwrapped(x)
    guard = torch._C._DisableFuncTorch()  # noqa: F841 -- read the values as repr does
    x = forward_ad.unpack_dual(x).primal  # the primal of a forward-mode dual
    return x.detach().cpu().numpy().copy()


class TorchProbe(torch.nn.Module):
    """The kit's probe network in torch: u = e + bank slice + beta t + gamma r (see above)."""

    def __init__(self, probe, capacity):
        super().__init__()
        self.probe = probe
        self.bank = torch.nn.Parameter(torch.zeros(capacity, dtype=torch.float64))
        self.slots, self.offset = [], 0

    def forward(self, x, t=None, y=None, r=None, **kwargs):
        probe = self.probe
        probe.output(_plain(x), _plain(t), _plain(y), _plain(r))
        call = probe.calls[-1]
        e = call.out.copy()  # (n, D) minus the time terms, added back in torch for the JVP
        if call.t is not None:
            e -= call.t[:, None] * probe.beta
        if call.r is not None:
            e -= call.r[:, None] * probe.gamma
        n = e.size
        if self.offset + n > self.bank.numel():
            raise ValueError("the loss called the network more often than the probe allows")
        u = torch.as_tensor(e) + self.bank[self.offset:self.offset + n].view(e.shape)
        self.slots.append((call, self.offset, n))
        self.offset += n
        for time, slope in ((t, probe.beta), (r, probe.gamma)):
            if time is not None and np.any(slope):
                tt = torch.as_tensor(time, dtype=torch.float64).reshape(-1, 1)
                u = u + tt.to(torch.float64) * torch.as_tensor(slope)
        dtype = x.dtype if x.is_floating_point() else torch.float64
        return u.reshape(x.shape).to(dtype)


def wrap_training(loss_fn, calls_per_step=8, dtype=torch.float32):
    """loss_fn(model, x1, y[, x0]) on tensors (model a TorchProbe) -> the NumPy form.

    x1 and x0 reach the loss in `dtype` (float32 by default, as most torch code draws its
    times with torch.rand in float32, and torch.lerp refuses mixed dtypes); float32 is well
    inside the kit's 1e-4 tolerances."""
    from fm_numpy.conformance.training import _takes_x0

    def run(probe, x1, y, x0=None):
        module = TorchProbe(probe, calls_per_step * x1.size)
        args = (module, to_tensor(x1).to(dtype), to_tensor(y))
        args += () if x0 is None else (to_tensor(x0).to(dtype),)
        loss = loss_fn(*args)
        loss = loss[0] if isinstance(loss, (tuple, list)) else loss
        (grad,) = torch.autograd.grad(loss, [module.bank], allow_unused=True)
        grad = np.zeros(module.bank.shape) if grad is None else grad.detach().numpy()
        for call, offset, n in module.slots:
            call.grad = grad[offset:offset + n].reshape(call.out.shape)
        return float(loss.detach()), None

    if _takes_x0(loss_fn):
        def wrapped(model, x1, y, x0):
            return run(model, x1, y, x0)
    else:
        def wrapped(model, x1, y):
            return run(model, x1, y)
    return _name(loss_fn, wrapped)


def _generator(rng):
    return torch.Generator().manual_seed(int(rng.integers(2**62)))


def wrap_time_sampling(sampler):
    """sampler(n, generator) -> t or (r, t) tensors -> sampler(n, rng) on arrays."""
    def wrapped(n, rng):
        out = sampler(n, _generator(rng))
        if isinstance(out, (tuple, list)):
            return tuple(to_array(o) for o in out)
        return to_array(out)
    return _name(sampler, wrapped)


def wrap_seeded(sampler):
    """sampler(v, x0, generator) on tensors -> the NumPy form; torch's global RNG is reseeded
    from NumPy's (which the kit seeds), so a draw from the global stream shows."""
    def wrapped(v, x0, rng):
        torch.manual_seed(int(np.random.randint(2**31)))
        return to_array(sampler(_torch_field(v), to_tensor(x0), _generator(rng)))
    return _name(sampler, wrapped)


def wrap_prediction(convert):
    """convert(xt, v, t) on tensors -> arrays."""
    def wrapped(xt, v, t):
        return to_array(convert(to_tensor(xt), to_tensor(v), to_tensor(t)))
    return _name(convert, wrapped)


WRAPPERS = {"path": wrap_path, "solver": wrap_solver, "velocity": wrap_velocity,
            "likelihood": wrap_likelihood, "guidance": wrap_guidance,
            "diffusion_to_flow": wrap_diffusion_to_flow, "training": wrap_training,
            "time_sampling": wrap_time_sampling, "seeded": wrap_seeded,
            "prediction": wrap_prediction}


def check_path(sample, scheduler="condot", **scheduler_args):
    """fm_numpy.conformance.check_path of a torch sample(x0, x1, t) -> (xt, ut)."""
    return _np_conformance.check_path(wrap_path(sample), scheduler, **scheduler_args)


def check_solver(odeint, method="euler", **options):
    """fm_numpy.conformance.check_solver of a torch odeint(v, x0, t_grid)."""
    return _np_conformance.check_solver(wrap_solver(odeint), method, **options)


def check_velocity(v, data="8gaussians", tol=0.1):
    """fm_numpy.conformance.check_velocity of a trained torch v(x, t)."""
    return _np_conformance.check_velocity(wrap_velocity(v), data, tol)


def check_likelihood(log_likelihood, divergence="exact"):
    """fm_numpy.conformance.check_likelihood of a torch log_likelihood(v, x1)."""
    return _np_conformance.check_likelihood(wrap_likelihood(log_likelihood), divergence)


def check_guidance(guided):
    """fm_numpy.conformance.check_guidance of a torch guided(model, x, t, y, w)."""
    return _np_conformance.check_guidance(wrap_guidance(guided))


def check_diffusion_to_flow(convert, prediction="epsilon"):
    """fm_numpy.conformance.check_diffusion_to_flow of a torch convert(model, abar, prediction)."""
    return _np_conformance.check_diffusion_to_flow(wrap_diffusion_to_flow(convert), prediction)


def check_training_step(loss_fn, scheduler="condot", dtype=torch.float32, **options):
    """fm_numpy.conformance.check_training_step of a torch loss_fn(model, x1, y[, x0])."""
    return _np_conformance.check_training_step(wrap_training(loss_fn, dtype=dtype), scheduler,
                                               **options)


def check_time_sampling(sampler, law="any", **options):
    """fm_numpy.conformance.check_time_sampling of a torch sampler(n, generator)."""
    return _np_conformance.check_time_sampling(wrap_time_sampling(sampler), law, **options)


def check_seeded(sampler, stochastic=True):
    """fm_numpy.conformance.check_seeded of a torch sampler(v, x0, generator)."""
    return _np_conformance.check_seeded(wrap_seeded(sampler), stochastic)


def check_prediction(convert, target="x1", scheduler="condot", **scheduler_args):
    """fm_numpy.conformance.check_prediction of a torch convert(xt, v, t)."""
    return _np_conformance.check_prediction(wrap_prediction(convert), target, scheduler,
                                            **scheduler_args)
