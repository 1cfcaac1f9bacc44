import sys

from scanedge.cli import main

sys.exit(main())
