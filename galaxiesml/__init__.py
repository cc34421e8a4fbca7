"""Domain logic of the GalaxiesML builder, free of Beam: catalog parsing, cuts, dedup, splits."""
