"""The one web app every instance runs: Gradio UI and API, OpenAI-compatible API, health probes.

Start one with `python -m asrfleet.instance --port 6006 ...` (see `asrfleet.config` for the
options). The launcher starts several, each with its own port, GPU and temp directory, all running
this code. The engine behind it lives in `asrfleet.engines`.
"""
