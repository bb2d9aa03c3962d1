"""The user's own data files as tensors: fm_numpy's readers (fm_numpy/datafiles.py), sharded.

`read_data`, `split_indices`, `DataFile` and `RowView` are fm_numpy's, so both packages
read the same rows, labels and split. Under torchrun each rank takes `shard_rows(x, rank,
world)` = rows rank, rank + world, ... of its split: a RowView of the memory-mapped file,
so a rank reads only the rows of its batches, never the whole file. `batch_tensors` reads
rows and gives model-space tensors through a scaling of fm_torch/scaling.py.
"""

import numpy as np
import torch

from fm_numpy.datafiles import DataFile, RowView, read_data, split_indices

__all__ = ["DataFile", "RowView", "read_data", "split_indices", "shard_rows", "batch_tensors",
           "open_user_data"]


def shard_rows(x, rank, world_size):
    """Rank `rank`'s rows of x (ndarray, memmap or RowView): x[rank::world_size], not copied."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must lie in [0, {world_size}), got {rank}")
    if len(x) < world_size:
        raise ValueError(f"{len(x)} rows cannot be shared among {world_size} processes")
    view = x if isinstance(x, RowView) else RowView(x)
    return view[rank::world_size]  # a RowView: nothing read


def batch_tensors(x, y, idx, scaling, dtype=torch.float32, device=None):
    """(x1 (B, ...) model space, y (B,) int64 or None) of rows idx (B,) of x (raw) and y."""
    idx = np.asarray(idx, dtype=np.int64)
    x1 = scaling.encode(x[idx], dtype=dtype, device=device)  # (B, *shape)
    labels = None if y is None else torch.as_tensor(np.asarray(y)[idx], device=device)
    return x1, labels


# open_user_data lives in fm_torch/data.py beside ArraySource (which it builds), so
# data.py need not import this module: no import circle; re-exported here.
from fm_torch.data import open_user_data  # noqa: E402
