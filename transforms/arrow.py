"""Arrow tables as PCollection elements: a coder that sends them in Arrow's IPC format (pickling
a sliced table would send its whole parent buffers along)."""
from __future__ import annotations

import pyarrow as pa
from apache_beam import coders


class ArrowTableCoder(coders.Coder):
    """Encodes a pyarrow.Table as an Arrow IPC stream."""

    def encode(self, value: pa.Table) -> bytes:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, value.schema) as writer:
            writer.write_table(value)
        return sink.getvalue().to_pybytes()

    def decode(self, encoded: bytes) -> pa.Table:
        return pa.ipc.open_stream(pa.py_buffer(encoded)).read_all()

    def is_deterministic(self) -> bool:
        return False

    def to_type_hint(self):
        return pa.Table


coders.registry.register_coder(pa.Table, ArrowTableCoder)
