"""Print setup.cfg's install_requires, one per line, for `pip install -r` in the image build.

The image installs tfmf's dependencies in a layer of their own (rebuilt only when setup.cfg
changes), then tfmf itself with --no-deps after its source is copied.
"""
from __future__ import annotations

import configparser
import sys


def main(path: str) -> int:
    cfg = configparser.ConfigParser()
    if not cfg.read(path):
        print(f"{path}: cannot read", file=sys.stderr)
        return 1
    for line in cfg["options"]["install_requires"].splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "setup.cfg"))
