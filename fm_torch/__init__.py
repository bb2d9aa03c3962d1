"""fm_torch: the PyTorch twin of fm_numpy (same names, same arithmetic order).

Importing it before torch sets OpenMP's wait policy to passive unless the user chose one
(fm_torch/cpu.py: spinning threads made two threads several times slower than one when
another process held a core). After `import torch` it is too late, and nothing is changed.
"""

import sys as _sys

from fm_torch.cpu import openmp_wait_policy as _openmp_wait_policy

if "torch" not in _sys.modules:
    _openmp_wait_policy()
