"""Clients of the HSC PDR2 archive services (das_cutout, catalog jobs) and the facts they share."""
