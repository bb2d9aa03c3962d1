"""Training settings of fm-torch: the defaults, their validation (resolve_config), and the
network a configuration describes (build_model, load_model for a ckpt.pt). The loop that
uses them is fm_torch/train.py, which re-exports these names."""

from fm_numpy.schedules import RECIPE_DEFAULTS, make_recipe
from fm_torch.data import DATASETS
from fm_torch.io import load_checkpoint
from fm_torch.paths import make_scheduler

__all__ = ["DEFAULTS", "MNIST_DEFAULTS", "CUSTOM", "resolve_config", "build_model",
           "load_weights", "load_model"]

CUSTOM = "custom"  # data given as an object (fm_torch.train.train(data=...)), not by name

DEFAULTS = {
    "data": "8gaussians", "steps": 6000, "batch": 512, "lr": 2e-3, "hidden": 256, "depth": 3,
    "time_features": 32, "scheduler": "condot", "seed": 0, "ckpt_every": 1000,
    "label_dropout": 0.1, "weight_decay": 0.0, "max_grad_norm": 1.0, "ema_decay": 0.999,
    "base": 32, "mults": [1, 2, 2], "res_blocks": 1, "sample_every": 1000, "n_train": None,
    "toy_pool": 100_000, "bf16": None, "compile": False,  # bf16 None: chosen per run
    "coupling": "independent", "coupling_block": None, "objective": "fm",
    "meanflow_ratio": 0.25, "meanflow_norm_p": 1.0, "pairs": None, "distill": False,
    "diffusion": None, "init_from": None,  # fm_torch/train_diffusion.py: DDPM, Diff2Flow
    "time_scale": 1000.0, "label_column": None, "val_fraction": None, **RECIPE_DEFAULTS,
}
# warm-up + cosine decay: at the demo budget it beat the constant rate at every guidance
# measured (docs/benchmarks.md, "Recipes at the demo budget": FD 34.6 vs 42.2 at w = 2,
# 17.8 vs 22.0 at w = 1.5); the warm-up, unless given, is the same 1/16 of the run as the
# demo's 50 of 800 (MNIST_WARMUP_FRACTION, set in resolve_config once `steps` is known)
MNIST_DEFAULTS = {"steps": 3000, "batch": 128, "lr": 1e-3, "weight_decay": 0.0,
                  "lr_schedule": "cosine"}
MNIST_WARMUP_FRACTION = 1 / 16

# settings that may change when a run is resumed; everything else must match the checkpoint
_RESUMABLE = ("steps", "ckpt_every", "sample_every", "bf16", "compile")


def resolve_config(**overrides):
    """Defaults (MNIST's for data="mnist"), then the given non-None overrides; validated."""
    data = overrides.get("data") or DEFAULTS["data"]
    from fm_numpy.userdata import DEFAULT_VAL_FRACTION, is_data_file, read_cached

    user_file = is_data_file(data)  # the user's file: the network is sized from it
    if data not in DATASETS and data != CUSTOM and not user_file:
        raise ValueError(f"unknown data set {data!r}; choose one of {', '.join(DATASETS)}")
    if not user_file and (overrides.get("label_column") is not None
                          or overrides.get("val_fraction")):
        raise ValueError(f"label_column and val_fraction are for the user's own data "
                         f"files, not data {data!r}")
    record = read_cached(data, overrides.get("label_column")) if user_file else None
    images = record is not None and record.kind == "images"
    config = dict(DEFAULTS)
    if data == "mnist":
        config.update(MNIST_DEFAULTS)
    if images:  # the image recipe measured on small data (fm_numpy/models/sizing.py)
        from fm_numpy.models.sizing import image_defaults

        config.update({k: v for k, v in image_defaults(record.shape).items() if k != "arch"})
    if user_file:
        config["val_fraction"] = DEFAULT_VAL_FRACTION
    config.update({k: v for k, v in overrides.items() if v is not None})
    if data == "mnist" and overrides.get("warmup") is None:
        config["warmup"] = int(config["steps"] * MNIST_WARMUP_FRACTION)
    if images and overrides.get("warmup") is None:  # a tenth of a shorter run at most
        config["warmup"] = max(0, min(config["warmup"], int(config["steps"]) // 10))
    unknown = set(config) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown training settings: {', '.join(sorted(unknown))}")
    config["mults"] = [int(m) for m in config["mults"]]
    for key in ("steps", "batch", "hidden", "depth", "ckpt_every", "sample_every", "base",
                "res_blocks", "toy_pool"):
        if int(config[key]) != config[key] or config[key] < 1:
            raise ValueError(f"{key} must be a positive integer, got {config[key]}")
    if not config["mults"] or min(config["mults"]) < 1:
        raise ValueError(f"mults must be positive integers, got {config['mults']}")
    if not config["lr"] > 0:
        raise ValueError(f"lr must be positive, got {config['lr']}")
    if not 0 <= config["label_dropout"] < 1:
        raise ValueError(f"label_dropout must lie in [0, 1), got {config['label_dropout']}")
    if not 0 <= config["ema_decay"] < 1:
        raise ValueError(f"ema_decay must lie in [0, 1), got {config['ema_decay']}")
    if config["max_grad_norm"] is not None and not config["max_grad_norm"] > 0:
        raise ValueError(f"max_grad_norm must be positive, got {config['max_grad_norm']}")
    if config["bf16"] not in (None, True, False):
        raise ValueError(f"bf16 must be true, false or unset (chosen), got {config['bf16']!r}")
    make_scheduler(config["scheduler"])  # raises ValueError for an unknown name
    if config["diffusion"] is not None:
        from fm_torch.train_diffusion import check_diffusion_config

        config["diffusion"] = check_diffusion_config(config["diffusion"], config["scheduler"])
    from fm_numpy.fewstep import check_fewstep_settings

    check_fewstep_settings(config)
    if config["objective"] == "meanflow" and config["diffusion"] is not None:
        raise ValueError("objective meanflow trains a flow; it cannot be combined with a "
                         "diffusion objective")
    if not 0 < config["time_scale"] < float("inf"):
        raise ValueError(f"time_scale must be a positive finite number, got {config['time_scale']}")
    make_recipe(config)  # lr schedule and time sampling: ValueError for a bad setting
    return config


def build_model(config):
    """The U-Net (data="mnist") or the MLP (2-D toys) that config describes."""
    if config["data"] == "mnist":
        from fm_torch.models.unet import UNet

        return UNet(1, config["base"], tuple(config["mults"]), config["res_blocks"],
                    config["time_features"], num_classes=10,
                    mean_flow=config.get("objective") == "meanflow")
    from fm_torch.models.mlp import MLP

    return MLP(2, config["hidden"], config["depth"], config["time_features"], None,
               seed=config["seed"], mean_flow=config.get("objective") == "meanflow",
               time_scale=config["time_scale"])


def load_weights(model, checkpoint, ema, path):
    """model with the checkpoint's EMA (or raw) weights; one line if they do not fit."""
    state = checkpoint["ema"]["model"] if ema else checkpoint["model"]
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        reason = str(e).splitlines()[0]
        raise ValueError(f"{path}: weights do not fit the model ({reason})") from None
    return model


def load_model(path, ema=True, map_location="cpu"):
    """(model, checkpoint) from a ckpt.pt; the EMA weights unless ema=False. Model in eval mode."""
    checkpoint = load_checkpoint(path, map_location=map_location)
    for key in ("config", "model", "ema", "step"):
        if key not in checkpoint:
            raise ValueError(f"{path} is not an fm-torch training checkpoint (no {key!r})")
    config = resolve_config(**checkpoint["config"])
    model = load_weights(build_model(config), checkpoint, ema, path)
    from fm_torch.train_diffusion import velocity_view  # a diffusion net as its flow

    return velocity_view(config, model).eval(), checkpoint
