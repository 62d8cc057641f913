"""`python -m instances` from a checkout: one instance, the same as `python -m asrfleet.instance`.

The web app itself is the package `asrfleet.instance`, so that an installed asrfleet carries it.
"""
