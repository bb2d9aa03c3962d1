"""Conformance kit: check anyone's flow-matching callables against fm-dual's closed forms.

NumPy + SciPy only (fm_torch/conformance.py wraps torch callables). Each check takes a
user's function and returns a `Report` with `passed`, `findings` (one line each:
`code: what is wrong, the measured number; fix: ...`), `notes` and table `rows`:

    check_path(sample, scheduler="condot", **scheduler_args)   sample(x0, x1, t) -> (xt, ut)
    check_solver(odeint, method="euler")                        odeint(v, x0, t_grid) -> states
    check_velocity(v, data="8gaussians")                        a trained v(x, t)
    check_likelihood(log_likelihood, divergence="exact")        log_likelihood(v, x1) -> (B,)
    check_guidance(guided)                                      guided(model, x, t, y, w) -> v
    check_diffusion_to_flow(convert, prediction="epsilon")      convert(model, abar, pred) -> v
    check_training_step(loss_fn, scheduler="condot", objective="fm", ...)
                                                    loss_fn(model, x1, y[, x0]) -> loss[, dv]
    check_time_sampling(sampler, law="any", ratio=None)         sampler(n, rng) -> t or (r, t)
    check_seeded(sampler)                                       sampler(v, x0, rng) -> x
    check_prediction(convert, target="x1", scheduler="condot")  convert(xt, v, t) -> x1_hat

The reference values are float64 .npz files in reference/ (python -m
fm_numpy.conformance.make_reference writes them). docs/conformance.md is the how-to.
"""

from .diffusion_to_flow import check_diffusion_to_flow
from .guidance import check_guidance
from .likelihood import check_likelihood
from .path import check_path
from .prediction import check_prediction
from .report import Report
from .seeded import check_seeded
from .solver import check_solver
from .time_sampling import check_time_sampling
from .training import check_training_step
from .velocity import check_velocity

__all__ = ["Report", "check_path", "check_solver", "check_velocity", "check_likelihood",
           "check_guidance", "check_diffusion_to_flow", "check_training_step",
           "check_time_sampling", "check_seeded", "check_prediction", "CHECKS"]

CHECKS = {"path": check_path, "solver": check_solver, "velocity": check_velocity,
          "likelihood": check_likelihood, "guidance": check_guidance,
          "diffusion_to_flow": check_diffusion_to_flow, "training": check_training_step,
          "time_sampling": check_time_sampling, "seeded": check_seeded,
          "prediction": check_prediction}
