"""The settings of a fm_numpy training run: defaults per data set and network, validation.

resolve_config(**settings) -> config (a dict with every key of DEFAULTS) is what train.py
turns into objects; config.json and the checkpoint store it. data="custom" / arch="custom"
stand for a source / network object handed to train() (fm_numpy/train.py).
"""

import math

import numpy as np

from fm_numpy.coupling import COUPLINGS
from fm_numpy.data import TOY_DATASETS
from fm_numpy.models import ARCHITECTURES
from fm_numpy.paths import make_scheduler
from fm_numpy.schedules import RECIPE_DEFAULTS, make_recipe
from fm_numpy.userdata import data_defaults, is_data_file

__all__ = ["DEFAULTS", "MNIST_DEFAULTS", "MNIST_RESMLP_DEFAULTS", "MNIST_CONVNET_DEFAULTS",
           "OBJECTIVES", "CUSTOM", "RESUMABLE", "resolve_config", "check_fewstep_settings"]

OBJECTIVES = ("fm", "meanflow")
CUSTOM = "custom"  # data or arch given as an object, not by name

DEFAULTS = {
    "data": "8gaussians", "steps": 6000, "batch": 512, "lr": 2e-3, "hidden": 256, "depth": 3,
    "time_features": 32, "scheduler": "condot", "seed": 0, "ckpt_every": 1000,
    "label_dropout": 0.1, "weight_decay": 0.0, "max_grad_norm": None, "dtype": "float32",
    "n_train": None, "arch": "mlp", "coupling": "independent", "coupling_block": None,
    "objective": "fm", "meanflow_ratio": 0.25, "meanflow_norm_p": 1.0, "pairs": None,
    "distill": False, "ema_decay": 0.99, "time_scale": 1000.0, "label_column": None,
    "val_fraction": None, **RECIPE_DEFAULTS,
}
# EMA 0.99 on the 2-D sets: at the CLI's size (256 x 3, batch 512, 4000 steps, checkerboard,
# seeds 0 and 1) it cut the energy distance from 0.0067 to 0.0021 and sliced W1 from 0.078
# to 0.043; on Meta's notebook recipe it is what beats Meta (docs/benchmarks.md, issue 13).
# The MNIST networks keep their measured recipes, without an EMA (ema_decay 0 below).
MNIST_DEFAULTS = {"steps": 3000, "batch": 128, "lr": 1e-3, "hidden": 512, "depth": 3,
                  "ema_decay": 0.0}
# `--arch resmlp` on MNIST: the residual LayerNorm MLP of fm_numpy/models/resmlp.py (issue 13;
# docs/numpy.md section 7); MNIST_DEFAULTS above stay those of `--arch mlp`
MNIST_RESMLP_DEFAULTS = {"steps": 6000, "batch": 128, "lr": 1e-3, "hidden": 768, "depth": 4,
                         "arch": "resmlp", "ema_decay": 0.0}
# MNIST's default network (issue 13, docs/numpy.md section 8): the NumPy U-Net of
# fm_numpy/models/convnet.py (base width 16, widths 16-32-32 at 28-14-7), 2800 steps of 32
# (89,600 images: 6 min 17 s on 2 cores as two batch slices with OMP_NUM_THREADS=1, inside
# the 10-minute budget), warm-up and cosine lr decay (docs/benchmarks.md: batch 32 beat
# 800 steps of 64; FD 56.8, 43.8, 39.8 at w = 2 for 1600, 2400, 2800 steps)
MNIST_CONVNET_DEFAULTS = {"steps": 2800, "batch": 32, "lr": 2e-3, "hidden": 16, "depth": 3,
                          "warmup": 100, "lr_schedule": "cosine", "arch": "convnet",
                          "ema_decay": 0.0}

# settings that may change when a run is resumed; everything else must match the checkpoint
RESUMABLE = ("steps", "ckpt_every")


def resolve_config(**overrides):
    """Defaults (MNIST's for data="mnist"), then the given non-None overrides; validated."""
    data = overrides.get("data") or DEFAULTS["data"]
    config = dict(DEFAULTS)
    user_file = is_data_file(data)
    if user_file:  # the network sized from the file, a held-out split (fm_numpy/userdata.py)
        config.update(data_defaults(data, overrides.get("label_column"), overrides.get("arch"),
                                    overrides.get("steps")))
    elif overrides.get("label_column") is not None or overrides.get("val_fraction"):
        raise ValueError(f"label_column and val_fraction are for the user's own data "
                         f"files, not data {data!r}")
    if data == "mnist":
        config.update({"mlp": MNIST_DEFAULTS, "resmlp": MNIST_RESMLP_DEFAULTS}.get(
            overrides.get("arch"), MNIST_CONVNET_DEFAULTS))
    config.update({k: v for k, v in overrides.items() if v is not None})
    unknown = set(config) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown training settings: {', '.join(sorted(unknown))}")
    for key in ("steps", "batch", "hidden", "depth", "ckpt_every", "time_features", "n_train",
                "coupling_block"):
        value = config[key]
        if key in ("n_train", "coupling_block") and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or (
                not math.isfinite(value) or int(value) != value or value < 1):
            raise ValueError(f"{key} must be a positive integer, got {value!r}")
    if config["time_features"] % 2:
        raise ValueError(f"time_features must be even, got {config['time_features']}")
    if not (isinstance(config["seed"], (int, np.integer)) and config["seed"] >= 0):
        raise ValueError(f"seed must be a non-negative integer, got {config['seed']!r}")
    def real(value):
        return isinstance(value, (int, float, np.number)) and not isinstance(value, bool)

    if not (real(config["lr"]) and 0 < config["lr"] < math.inf):
        raise ValueError(f"lr must be a positive finite number, got {config['lr']!r}")
    if not (real(config["weight_decay"]) and 0 <= config["weight_decay"] < math.inf):
        raise ValueError(f"weight_decay must be a finite number >= 0, "
                         f"got {config['weight_decay']!r}")
    mgn = config["max_grad_norm"]
    if mgn is not None and not (real(mgn) and 0 < mgn < math.inf):
        raise ValueError(f"max_grad_norm must be positive, got {mgn!r}")
    if config["dtype"] not in ("float32", "float64"):
        raise ValueError(f"dtype must be float32 or float64, got {config['dtype']!r}")
    if not 0 <= config["label_dropout"] < 1:
        raise ValueError(f"label_dropout must lie in [0, 1), got {config['label_dropout']}")
    if config["data"] not in ("mnist", CUSTOM, *TOY_DATASETS) and not user_file:
        raise ValueError(f"unknown data set {config['data']!r}; choose mnist or one of "
                         f"{', '.join(TOY_DATASETS)}")
    make_scheduler(config["scheduler"])  # raises ValueError for an unknown name
    if config["arch"] not in (*ARCHITECTURES, CUSTOM):
        raise ValueError(f"unknown architecture {config['arch']!r}; choose one of "
                         f"{', '.join(ARCHITECTURES)}")
    if config["arch"] == "convnet" and config["data"] not in ("mnist", CUSTOM) and not user_file:
        raise ValueError(f"the convnet U-Net needs images (data mnist), not {config['data']!r}")
    check_fewstep_settings(config)
    if not (real(config["time_scale"]) and 0 < config["time_scale"] < math.inf):
        raise ValueError(f"time_scale must be a positive finite number, "
                         f"got {config['time_scale']!r}")
    if config["arch"] != "mlp" and config["time_scale"] != DEFAULTS["time_scale"]:
        # the ResMLP and ConvUNet embed 1000 t: a scale they would ignore is refused
        raise ValueError(f"time_scale applies to the mlp only; the {config['arch']} network "
                         f"embeds 1000 t, got time_scale {config['time_scale']!r}")
    if not (real(config["ema_decay"]) and 0 <= config["ema_decay"] < 1):
        raise ValueError(f"ema_decay must lie in [0, 1), got {config['ema_decay']!r}")
    make_recipe(config)  # lr schedule and time sampling: ValueError for a bad setting
    return config


def check_fewstep_settings(config):
    """ValueError for a bad coupling, objective, meanflow_ratio, pairs or distill setting."""
    if config["coupling"] not in COUPLINGS:
        raise ValueError(f"unknown coupling {config['coupling']!r}; choose one of "
                         f"{', '.join(COUPLINGS)}")
    if config["objective"] not in OBJECTIVES:
        raise ValueError(f"unknown objective {config['objective']!r}; choose one of "
                         f"{', '.join(OBJECTIVES)}")
    ratio = config["meanflow_ratio"]
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio <= 1:
        raise ValueError(f"meanflow_ratio must lie in [0, 1], got {ratio!r}")
    p = config["meanflow_norm_p"]
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 2:
        raise ValueError(f"meanflow_norm_p must lie in [0, 2], got {p!r}")
    if config["pairs"] is not None and not isinstance(config["pairs"], str):
        raise ValueError(f"pairs must be the path of a pairs .npz, got {config['pairs']!r}")
    if not isinstance(config["distill"], bool):
        raise ValueError(f"distill must be true or false, got {config['distill']!r}")
    if config["objective"] == "meanflow" and config.get("arch", "mlp") not in ("mlp", CUSTOM):
        raise ValueError(f"objective meanflow needs --arch mlp (the {config['arch']} network "
                         f"has no second time input r)")
    if config["distill"] and config["objective"] != "fm":
        raise ValueError("distill trains a one-step flow-matching student; use objective fm")
    if config["pairs"] is not None and config["coupling"] != "independent":
        raise ValueError("reflow pairs are fixed; they cannot be re-paired by a coupling")
