#!/usr/bin/env python
"""Entry point: ``python run.py`` runs the embedded default; ``python run.py --help`` for more."""

import sys

from benchmark.cli import main

if __name__ == "__main__":
    sys.exit(main())
