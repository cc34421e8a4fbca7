"""Beam transforms, one module per stage of the paper's flow (Fig. 2).

Importing them, as every worker does to run a stage, makes jemalloc the process's Arrow memory
pool (galaxiesml.memory.use_jemalloc): Arrow allocates in every stage, so the choice is made once
for the whole process."""
from galaxiesml.memory import use_jemalloc

use_jemalloc()
