"""`train --data DIR` of images with no other flag: both packages take the image recipe
measured on small data (fm_numpy/models/sizing.py), not MNIST's (minutes, not an hour)."""

import numpy as np
import pytest
from PIL import Image

from fm_numpy.models.sizing import image_defaults


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(6):
            pixels = rng.integers(0, 256, (8, 8), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / c / f"{i}.png")
    return str(tmp_path)


@pytest.mark.parametrize("package", ["fm_numpy", "fm_torch"])
def test_image_folders_take_the_small_image_recipe(folder, package):
    import importlib

    resolve_config = importlib.import_module(f"{package}.train_config").resolve_config
    recipe = image_defaults((1, 8, 8))
    config = resolve_config(data=folder)
    for key in ("steps", "batch", "lr", "warmup", "lr_schedule", "ema_decay"):
        assert config[key] == recipe[key], key
    assert resolve_config(data=folder, steps=100)["warmup"] == 10  # a tenth of a short run
    assert resolve_config(data=folder, steps=100, warmup=3)["warmup"] == 3  # given: kept
