"""``edge-bench``: measuring the engine, the in-process pipeline and the live stream, and reporting it.

It sits on the top floor: it drives the runtime, engines and imaging, and none of them imports it.
"""

__all__: list[str] = []
