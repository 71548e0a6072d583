"""Baselines the paper compares with: HOGgle (:mod:`preimage.baselines.hoggle`).

Other algorithms re-expressed for the benchmarks: pytorch-cnn-visualizations' inversion
(:mod:`preimage.baselines.cnn_visualizations`)."""
