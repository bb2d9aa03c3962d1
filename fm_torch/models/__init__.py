"""Neural velocity fields for fm_torch."""
