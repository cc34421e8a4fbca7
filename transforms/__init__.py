"""Beam transforms, one module per stage of the paper's flow (Fig. 2)."""
