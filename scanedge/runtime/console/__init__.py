"""The console side: the client a scanner console links (socket owned by its I/O thread), shared-memory
regions it offers, and the replay tool that plays a series like a console would.
"""

__all__: list[str] = []  # import from the modules themselves; scanedge.runtime re-exports the public API
