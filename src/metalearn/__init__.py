"""metalearn: a reproducible benchmark of gradient-based meta-learning (MAML, iMAML, WarpGrad, T/MT-nets)."""
__version__ = "0.1.0"
