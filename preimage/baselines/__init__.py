"""Baselines the paper compares with: HOGgle (:mod:`preimage.baselines.hoggle`)."""
