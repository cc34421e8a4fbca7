"""Arrow tables as PCollection elements, sent in Arrow's IPC format.

A coder is registered for typed PCollections, and pickling (Beam's fallback for untyped ones, such
as tagged outputs) is taught the same format: pyarrow's own pickling sends a sliced table's whole
parent buffers along.
"""
from __future__ import annotations

import copyreg

import pyarrow as pa
from apache_beam import coders


_COMPRESSED = pa.ipc.IpcWriteOptions(compression="zstd")
_PLAIN = pa.ipc.IpcWriteOptions()
#: Tables above this size are zstd-compressed: runners that buffer PCollections in memory
#: (DirectRunner) then hold half the bytes, for ~2 ms per MB; below it the fixed cost of
#: compression (~0.3 ms a table) outweighs the gain.
COMPRESS_ABOVE_BYTES = 1 << 20


def table_to_bytes(table: pa.Table) -> bytes:
    """A table (slices included, only their rows) as an Arrow IPC stream."""
    sink = pa.BufferOutputStream()
    options = _COMPRESSED if table.nbytes > COMPRESS_ABOVE_BYTES else _PLAIN
    with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def table_from_bytes(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()


class ArrowTableCoder(coders.Coder):
    """Encodes a pyarrow.Table as an Arrow IPC stream."""

    def encode(self, value: pa.Table) -> bytes:
        return table_to_bytes(value)

    def decode(self, encoded: bytes) -> pa.Table:
        return table_from_bytes(encoded)

    def estimate_size(self, value: pa.Table) -> int:
        return value.nbytes  # Beam samples element sizes; encoding to measure would cost a copy

    def is_deterministic(self) -> bool:
        return False

    def to_type_hint(self):
        return pa.Table


def typed_outputs(outputs, main: type = pa.Table, **tags: type):
    """Set the element types of a multi-output ParDo's outputs, which `with_output_types` does
    not reach, so that each gets its coder (tables: ArrowTableCoder) instead of pickling."""
    outputs[outputs._main_tag].element_type = main
    for tag, kind in tags.items():
        outputs[tag].element_type = kind
    return outputs


coders.registry.register_coder(pa.Table, ArrowTableCoder)
copyreg.pickle(pa.Table, lambda t: (table_from_bytes, (table_to_bytes(t),)))
