"""Learning-rate schedules and time-sampling distributions for training.

Learning rate of update n = 0, 1, ..., N - 1 (N = steps, W = warmup, eta = base lr):
    warm-up    eta_n = eta (n + 1) / W                       for n < W
    then, with p = (n - W) / (N - W) in [0, 1):
    constant   eta_n = eta
    cosine     eta_n = eta (1 + cos(pi p)) / 2
    linear     eta_n = eta (1 - p)
The arithmetic is plain Python floats, so fm_torch.schedules uses this very function
and applies it through the optimizer's param_groups.

Time sampling, t in [0, 1] per sample:
    uniform        t = U, U ~ U[0, 1)      (rng.random: the stream older runs drew)
    logit-normal   t = 1 / (1 + exp(-(m + s z))), z ~ N(0, 1)   (Esser et al. 2024, SD3)
    fixed          t = c (distillation: c = 0), after the base sampler's draw (the stream of
                   older runs, which drew t and then zeroed it)
The training loop's samplers (Uniform, LogitNormal, Fixed) take a Draws object
(fm_numpy/draws.py): `times.sample(draws, B, dtype) -> t (B,)`, with the draw names "t" and
"t_z". TimeSampler keeps the older `sample(B, rng, dtype)` for fm_torch and the tests.

Recipe(lr_at, times, ema_decay, weight_decay, max_grad_norm, label_dropout) bundles what the
loop (fm_numpy/loop.py) needs of a recipe besides the network, data and objective.
"""

import math

import numpy as np

__all__ = ["LR_SCHEDULES", "TIME_SAMPLINGS", "LRSchedule", "TimeSampler", "logit_normal",
           "Uniform", "LogitNormal", "Fixed", "Recipe", "make_times"]

LR_SCHEDULES = ("constant", "cosine", "linear")
TIME_SAMPLINGS = ("uniform", "logit-normal")


class LRSchedule:
    """eta_n = LRSchedule(name, lr, steps, warmup)(n): the rate of update n (0-based)."""

    def __init__(self, name, lr, steps, warmup=0):
        if name not in LR_SCHEDULES:
            raise ValueError(f"unknown lr schedule {name!r}; choose one of "
                             f"{', '.join(LR_SCHEDULES)}")
        if not (isinstance(lr, (int, float, np.number)) and 0 < lr < math.inf):
            raise ValueError(f"lr must be a positive finite number, got {lr!r}")
        if int(steps) != steps or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        if isinstance(warmup, bool) or int(warmup) != warmup or not 0 <= warmup < steps:
            raise ValueError(f"warmup must be an integer in [0, steps = {steps}), got {warmup!r}")
        self.name, self.lr, self.steps, self.warmup = name, float(lr), int(steps), int(warmup)

    def __call__(self, n):
        n, W, N = int(n), self.warmup, self.steps
        if n < W:
            return self.lr * (n + 1) / W
        if self.name == "constant":
            return self.lr
        p = min((n - W) / (N - W), 1.0)  # past the end (a resumed, longer run): stay at p = 1
        if self.name == "cosine":
            return self.lr * (1.0 + math.cos(math.pi * p)) / 2.0
        return self.lr * (1.0 - p)


def logit_normal(z, mean=0.0, std=1.0):
    """t = 1 / (1 + exp(-(mean + std z))), elementwise; the arithmetic fm_torch repeats."""
    return 1.0 / (1.0 + np.exp(-(mean + std * z)))


class TimeSampler:
    """t ~ the named distribution on [0, 1]; `sample(B, rng, dtype)` -> (B,)."""

    def __init__(self, name="uniform", mean=0.0, std=1.0):
        if name not in TIME_SAMPLINGS:
            raise ValueError(f"unknown time sampling {name!r}; choose one of "
                             f"{', '.join(TIME_SAMPLINGS)}")
        if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
            raise ValueError(f"logit-normal needs a finite mean and std > 0, got {mean}, {std}")
        self.name, self.mean, self.std = name, float(mean), float(std)

    def sample(self, B, rng, dtype=np.float32):
        if self.name == "uniform":
            return rng.random(B, dtype=dtype)  # (B,)
        z = rng.standard_normal(B, dtype=dtype)  # (B,)
        return logit_normal(z, self.mean, self.std).astype(dtype)  # (B,)


class Uniform:
    """t ~ U[0, 1): draws.uniform("t", (B,), dtype), i.e. rng.random(B, dtype=dtype)."""

    name = "uniform"

    def sample(self, draws, B, dtype=np.float32):
        return draws.uniform("t", (B,), dtype)  # (B,)


class LogitNormal:
    """t = sigmoid(mean + std z), z ~ N(0, 1): draws.normal("t_z", (B,), dtype)."""

    name = "logit-normal"

    def __init__(self, mean=0.0, std=1.0):
        TimeSampler("logit-normal", mean, std)  # the same checks
        self.mean, self.std = float(mean), float(std)

    def sample(self, draws, B, dtype=np.float32):
        z = draws.normal("t_z", (B,), dtype)  # (B,)
        return logit_normal(z, self.mean, self.std).astype(dtype)  # (B,)


class Fixed:
    """t = value for every sample. With `base`, base's draw is made first and discarded, so
    the random stream is that of a run that sampled t and then fixed it (distill runs)."""

    name = "fixed"

    def __init__(self, value=0.0, base=None):
        self.value, self.base = float(value), base

    def sample(self, draws, B, dtype=np.float32):
        if self.base is not None:
            self.base.sample(draws, B, dtype)  # keeps the stream; the values are unused
        return np.full(B, self.value, dtype=dtype)  # (B,)


class Recipe:
    """What the loop needs besides net, data and objective: eta_n = lr_at(n), the time
    sampler, the EMA decay, Adam's decoupled weight decay and gradient clipping, and the
    label dropout p (y -> the null class num_classes with probability p)."""

    def __init__(self, lr_at, times=None, ema_decay=0.0, weight_decay=0.0, max_grad_norm=None,
                 label_dropout=0.0):
        if not callable(lr_at):  # a plain number: a constant rate
            lr = float(lr_at)
            lr_at = LRSchedule("constant", lr, 1)
        if not 0 <= label_dropout < 1:
            raise ValueError(f"label_dropout must lie in [0, 1), got {label_dropout}")
        if not 0 <= ema_decay < 1:
            raise ValueError(f"ema_decay must lie in [0, 1), got {ema_decay}")
        self.lr_at, self.times = lr_at, Uniform() if times is None else times
        self.ema_decay, self.weight_decay = float(ema_decay), float(weight_decay)
        self.max_grad_norm, self.label_dropout = max_grad_norm, float(label_dropout)


def make_times(config):
    """The loop's time sampler of a training config (Fixed(0) over it when distilling)."""
    if config["time_sampling"] == "uniform":
        times = Uniform()
    else:
        times = LogitNormal(config["time_mean"], config["time_std"])
    return Fixed(0.0, base=times) if config.get("distill") else times


# Training settings of the recipe (keys of both train.DEFAULTS), and the values that give
# the behaviour of runs made before they existed (so their checkpoints still resume).
RECIPE_DEFAULTS = {"lr_schedule": "constant", "warmup": 0, "time_sampling": "uniform",
                   "time_mean": 0.0, "time_std": 1.0}
LEGACY = {**RECIPE_DEFAULTS, "time_scale": 1000.0}


def make_recipe(config):
    """(LRSchedule, TimeSampler) of a training config; ValueError for a bad setting."""
    for key in ("time_mean", "time_std"):
        if isinstance(config[key], bool) or not isinstance(config[key], (int, float, np.number)):
            raise ValueError(f"{key} must be a number, got {config[key]!r}")
    schedule = LRSchedule(config["lr_schedule"], config["lr"], config["steps"], config["warmup"])
    sampler = TimeSampler(config["time_sampling"], config["time_mean"], config["time_std"])
    return schedule, sampler


def add_recipe_arguments(parser):
    """The recipe flags of `train`, one vocabulary for fm-numpy and fm-torch."""
    parser.add_argument("--lr-schedule", choices=LR_SCHEDULES,
                        help="learning-rate schedule after the warm-up (default constant)")
    parser.add_argument("--warmup", type=int, help="linear lr warm-up steps (default 0)")
    parser.add_argument("--time-sampling", choices=TIME_SAMPLINGS,
                        help="distribution of t in training (default uniform)")
    parser.add_argument("--time-mean", type=float, help="logit-normal mean m (default 0)")
    parser.add_argument("--time-std", type=float, help="logit-normal std s (default 1)")
    parser.add_argument("--time-scale", type=float,
                        help="MLP: time features of (scale * t) (default 1000)")


def recipe_settings(args):
    """The train() settings of add_recipe_arguments' flags (None: the default)."""
    return dict(lr_schedule=args.lr_schedule, warmup=args.warmup,
                time_sampling=args.time_sampling, time_mean=args.time_mean,
                time_std=args.time_std, time_scale=args.time_scale)


def horizon_changed(saved, config):
    """True when a resumed run would move a decaying schedule's horizon (its `steps`)."""
    return config["lr_schedule"] != "constant" and saved.get("steps") != config["steps"]
