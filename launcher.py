#!/usr/bin/env python3
"""Bring up a speech-recognition fleet: `python launcher.py --instances 2`. See README.md."""

import sys

from asrfleet.fleet.cli import main

if __name__ == "__main__":
    sys.exit(main())
