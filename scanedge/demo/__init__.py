"""The shipped demonstration: a synthetic patient, the demo model's manifest, and how both were made.

The demo model is trained on synthetic images; it is not a medical device and not for clinical use.
"""

__all__: list[str] = []
