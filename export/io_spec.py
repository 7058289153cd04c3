"""The I/O spec of the exported graphs; it lives in ``clippy_rt.formats.io_spec``, shared by the
exporter and the runtimes (names kept here)."""

from clippy_rt.formats.io_spec import (DTYPES, FIXED_AXES, GRAPH_PRECISIONS, GRAPHS, IMAGE, SEG_HEAD,  # noqa: F401
                                       TEXT, TOWERS, Axis, GraphSpec, TensorSpec, fixed_dims, graph_for,
                                       validate_feed)
