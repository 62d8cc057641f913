#!/usr/bin/env python3
"""Bring up a speech-recognition fleet: `python launcher.py --instances 2`, the same command as the
installed `asrfleet`. See README.md."""

import sys

from asrfleet.fleet.cli import main

if __name__ == "__main__":
    sys.exit(main())
