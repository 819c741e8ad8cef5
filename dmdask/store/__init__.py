"""Stage 1 — the run store: one Zarr v3 group of models × examples.

``runstore`` holds the schema, the write protocol and the public entry points; ``sampling`` draws
the masks and seeds; ``jobspec`` resolves and checks the learning algorithm a store names;
``madrylab`` converts to and from MadryLab's ``.npy`` layout.
"""

from .runstore import (
    KINDS,
    SCHEMA_VERSION,
    add_models,
    block_range,
    create_jobless_store,
    create_store,
    incomplete_blocks,
    open_store,
    read_meta,
    store_info,
    write_block,
)

__all__ = [
    "KINDS",
    "SCHEMA_VERSION",
    "add_models",
    "block_range",
    "create_jobless_store",
    "create_store",
    "incomplete_blocks",
    "open_store",
    "read_meta",
    "store_info",
    "write_block",
]
