"""Old home of the MLP, kept so that `from fm_numpy.mlp import MLP` goes on working.

The network lives in fm_numpy/models/mlp.py beside the other networks of fm_numpy,
mirroring fm_torch/models/.
"""

from fm_numpy.models.files import read_weights
from fm_numpy.models.mlp import MLP

__all__ = ["MLP", "read_weights"]
