"""A sequence's saved KV state, moved between contexts of different stream
counts. llama.cpp writes a sequence's state as a magic number and the
sequence id (this version of llama_state_seq_get_data), the context's stream
count (u32), then per stream a cell count (u32) and, when non-zero, that stream's
cells; a sequence lives in one stream, so every other entry is a bare zero.
It refuses a state whose stream count differs from the context's, although
it restores the cells into the destination sequence's own stream whatever
their position. So a state saved in a context of 8 streams is restored in
one of 1 (memory pressure recreates the context smaller) by rewriting the
count and the empty entries around the one stream that holds cells."""

from __future__ import annotations

import struct

_U32 = struct.Struct("<I")
_MAGIC = 0xAF143CD8  # llama-context.cpp io_magic, followed by the source seq id (i32)


def restream(data: bytes, num_streams: int) -> bytes:
    """`data` (llama_state_seq_get_data of a plain KV cache) for a context of
    `num_streams` streams. Anything it does not recognize is returned as is,
    for llama.cpp to accept or refuse."""
    head = 8 if len(data) >= 8 and _U32.unpack_from(data)[0] == _MAGIC else 0
    if len(data) < head + 4:
        return data
    (old,) = _U32.unpack_from(data, head)
    if old == num_streams or old == 0 or num_streams < 1 or len(data) < head + 4 + 4 * old:
        return data
    pos, lead = head + 4, 0  # the empty streams before the one with cells
    while lead < old and _U32.unpack_from(data, pos)[0] == 0:
        pos, lead = pos + 4, lead + 1
    if lead == old:  # an empty sequence: no cells anywhere
        return data[:head] + _U32.pack(num_streams) + bytes(4 * num_streams)
    tail = 4 * (old - 1 - lead)  # the empty streams after it
    if len(data) - pos < 4 + tail or any(data[len(data) - tail:]):
        return data
    cells = data[pos:len(data) - tail]
    return data[:head] + _U32.pack(num_streams) + cells + bytes(4 * (num_streams - 1))
