"""The wire: the protocol's messages (protocol.md), the payloads that carry images and results, endpoint
parsing and CurveZMQ keys. Both the runtime and the console side import it; it imports neither.
"""

__all__: list[str] = []  # import from the modules themselves; scanedge.runtime re-exports the public API
