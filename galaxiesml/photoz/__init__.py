"""Photometric-redshift baselines of the paper's Appendix 11: metrics (numpy), plots, and the NN and
hybrid CNN (torch, the `torch` extra) with their training command `python -m galaxiesml.photoz.train`."""
