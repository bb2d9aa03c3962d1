"""Input checks shared by the NumPy networks (models/mlp.py, resmlp.py, convnet.py)."""

import numpy as np

__all__ = ["check_t"]


def check_t(t, B, dtype):
    """t as a (B,) array of `dtype` (a scalar is repeated); ValueError unless all t in [0, 1]."""
    t = np.asarray(t, dtype=dtype)
    if t.ndim == 0:
        t = np.full(B, t, dtype=dtype)
    elif t.shape != (B,):
        raise ValueError(f"t must be a scalar or have shape ({B},), got {t.shape}")
    if not (t.min() >= 0 and t.max() <= 1):  # NaN fails too
        raise ValueError(f"t must lie in [0, 1], got values from {t.min()} to {t.max()}")
    return t
