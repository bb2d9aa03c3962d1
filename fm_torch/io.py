"""Torch checkpoints on disk: atomic writes, loads that never execute pickled code.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts (model and EMA
state_dicts, the optimizer's state_dict, the step, RNG states, the JSON-able config),
so torch.load(weights_only=True) reads it back without unpickling arbitrary objects.
"""

import os

import torch

from fm_numpy.io import atomic_path

__all__ = ["save_checkpoint", "load_checkpoint"]


def save_checkpoint(path, checkpoint):
    """Write checkpoint (a dict) to path atomically: temp file, fsync, rename."""
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)


def load_checkpoint(path, map_location="cpu"):
    """Read a checkpoint with torch.load(weights_only=True).

    Raises FileNotFoundError if it is missing and ValueError (one line naming the file)
    if it is truncated, corrupt or holds anything but tensors and plain containers.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such checkpoint: {path}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001  (garbage bytes fail in many ways, e.g. IndexError)
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path} is not a readable torch checkpoint ({reason})") from None
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path} is not an fm-torch checkpoint (expected a dict)")
    return checkpoint
