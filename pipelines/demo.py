"""`make demo`: the same as `tfmf demo` (see :mod:`tfmf.demo`)."""
from __future__ import annotations

import sys

import tfmf  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from tfmf.demo import main

if __name__ == "__main__":
    sys.exit(main())
