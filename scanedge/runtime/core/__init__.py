"""The in-process core: a model and its pipeline (preprocess, engine, postprocess, overlay), one slice or a batch,
with no sockets. A console that embeds scanedge without a runtime process uses only this.
"""

__all__: list[str] = []  # import from the modules themselves; scanedge.runtime re-exports the public API
