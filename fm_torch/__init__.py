"""fm_torch: the PyTorch twin of fm_numpy (same names, same arithmetic order)."""
