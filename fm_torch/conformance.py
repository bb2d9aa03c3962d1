"""Tensor wrappers for the conformance kit: check torch callables with fm_numpy.conformance.

The checks live in fm_numpy/conformance/ (NumPy only). Each `wrap_<kind>` turns a torch
user's function into the NumPy one the check expects: arrays become float64 CPU tensors
on the way in and arrays again on the way out, and the kit's own callables (fields,
models) are handed over as torch callables. `check_<kind>` does both steps:

    from fm_torch.conformance import check_path
    report = check_path(my_torch_sample, "condot")

For check_likelihood the kit's field is rebuilt as fm_torch.analytic.GaussianMixtureField
(differentiable, so autograd divergences work) and handed over without a divergence method.
"""

import numpy as np
import torch

from fm_numpy import conformance as _np_conformance

__all__ = ["to_tensor", "to_array", "wrap_path", "wrap_solver", "wrap_velocity",
           "wrap_likelihood", "wrap_guidance", "wrap_diffusion_to_flow", "WRAPPERS",
           "check_path", "check_solver", "check_velocity", "check_likelihood",
           "check_guidance", "check_diffusion_to_flow"]


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


WRAPPERS = {"path": wrap_path, "solver": wrap_solver, "velocity": wrap_velocity,
            "likelihood": wrap_likelihood, "guidance": wrap_guidance,
            "diffusion_to_flow": wrap_diffusion_to_flow}


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
