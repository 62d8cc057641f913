"""`python launcher.py transcribe INPUT... --out DIR`: a folder of recordings through one or more
fleets, resumable, largest files first, every instance kept busy by pulling work.

  inputs.py   files, folders and globs -> the recordings, with where their outputs go
  journal.py  what is done, so that a re-run skips it
  client.py   one request to the OpenAI-compatible API, with retries across URLs
  run.py      the pull loop, the progress line and the summary
"""
