"""``python -m tfmf``: the same as the ``tfmf`` console script."""
import sys

from tfmf.cli import main

sys.exit(main())
