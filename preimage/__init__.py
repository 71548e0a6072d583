"""preimage: reconstruct images from their representations.

Mahendran & Vedaldi, "Understanding Deep Image Representations by Inverting Them" (CVPR 2015),
as a batched PyTorch library. A representation is a differentiable ``torch.nn.Module`` mapping an
image batch ``(B, C, H, W)`` on a 0–255 scale to a code; the objective and the optimiser know
nothing else about it.
"""

__version__ = "0.1.0"
