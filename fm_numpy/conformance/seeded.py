"""check_seeded: a stochastic sampler must draw its noise from the generator it is given.

    sampler(v, x0, rng) -> x        rng a numpy Generator (torch: a torch.Generator)

Three runs on the field v(x, t) = -x from the same x0: (a) rng seeded 7, the global RNGs
seeded 1; (b) rng seeded 7, the global RNGs seeded 2; (c) rng seeded 8, global 1. Equal
(a) and (b), bit for bit, is reproducibility; (a) != (c) shows the generator is used. A
result that changes with the global seed (b) draws from the global stream
(`torch.randn_like(x)` where `randn_tensor(..., generator=generator)` was meant: diffusers'
FlowMatchEulerDiscreteScheduler with stochastic_sampling, PR #13678). `scramble(seed)`
reseeds the global generators: numpy's by default; fm_torch/conformance.py adds torch's.
"""

import numpy as np

from .report import Report, UserError, call_user

__all__ = ["check_seeded"]


def _field(x, t):
    return -np.asarray(x)


def check_seeded(sampler, stochastic=True, scramble=None):
    """Check that `sampler(v, x0, rng)` is reproducible from rng alone (module docstring)."""
    report = Report("seeded", getattr(sampler, "__name__", repr(sampler)))
    x0 = np.random.default_rng(0).standard_normal((4, 3))  # (B, D)
    outs = []
    for global_seed, seed in ((1, 7), (2, 7), (1, 8)):
        np.random.seed(global_seed)
        if scramble is not None:
            scramble(global_seed)
        try:
            outs.append(np.asarray(call_user(sampler, _field, x0.copy(),
                                             np.random.default_rng(seed)), dtype=np.float64))
        except UserError as e:
            report.fail("raises", f"the sampler raised {e.message}")
            return report
    same_seed = bool(np.array_equal(outs[0], outs[1]))
    uses_rng = not np.array_equal(outs[0], outs[2])
    report.row("same generator seed, other global seed: same result", "yes" if same_seed else
               f"no (max diff {np.max(np.abs(outs[0] - outs[1])):.2g})", "bit for bit", same_seed)
    report.row("other generator seed: other result", "yes" if uses_rng else "no", "yes",
               uses_rng or not stochastic)
    if not same_seed:
        report.fail("ignores-generator", "with the same generator the result changes with the "
                    "global random state: the noise is drawn from the global stream, not from "
                    "the generator you pass (diffusers PR #13678); fix: draw with "
                    "randn(shape, generator=generator)")
    elif not uses_rng and stochastic:
        report.fail("not-stochastic", "the result does not depend on the generator at all: no "
                    "noise is drawn; fix: pass stochastic=False for an ODE sampler")
    return report
