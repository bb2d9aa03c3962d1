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


def open_user_data(spec, label_column=None, val_fraction=None, seed=0, rank=0, world_size=1):
    """fm_torch.data.ArraySource of this rank's shard of the training split of the user's
    file (fm_numpy/userdata.py: the same split and scaling as fm_numpy's, from the same
    seed); .shape is the model-space sample shape, .info the run folder's data.json."""
    from fm_numpy.userdata import UserData
    from fm_torch.data import ArraySource

    data = UserData(spec, label_column, val_fraction, seed)
    y = data.labels(data.train_idx)
    # the source shards x[rank::world] itself: a RowView of those rows, nothing read yet
    src = ArraySource(data.train, None if y is None else torch.from_numpy(y), data.scaling,
                      num_classes=data.rec.num_classes, rank=rank, world_size=world_size)
    src.shape = data.rec.shape  # (D,) or (C, H, W), whatever the raw layout
    src.info = data.info()
    return src
