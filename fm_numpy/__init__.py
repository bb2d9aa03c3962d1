"""fm_numpy: flow matching in NumPy + SciPy, readable line by line against the math."""
