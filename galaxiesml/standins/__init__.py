"""Loopback stand-ins of the HSC PDR2 services (das_cutout and the catalog job API), serving a
synthetic sky, with seeded fault injection. For tests and benchmarks; they never touch the network."""
