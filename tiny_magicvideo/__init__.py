"""tiny-magicvideo: MagicVideo (latent video diffusion, arXiv 2211.11018) from scratch in PyTorch.

One module per component; see README.md for the map and lessons/ for the ideas.
"""

__version__ = "0.1.0"
