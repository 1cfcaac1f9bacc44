"""``python -m scanedge``: the ``scanedge`` command."""

import sys

from scanedge.cli import main

__all__: list[str] = []

if __name__ == "__main__":
    sys.exit(main())
