"""The runtime process: the server, its I/O loop (the one thread owning the sockets), the worker pool,
the latest-slice scheduler, per-series state, shared-memory regions and statistics.
"""

__all__: list[str] = []  # import from the modules themselves; scanedge.runtime re-exports the public API
