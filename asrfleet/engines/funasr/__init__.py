"""FunASR's Paraformer pipeline (VAD, ASR, punctuation), batched across requests.

Stages, one module each, in the order audio flows through them:
  prepare.py    (worker processes) decode, voice activity detection, ASR features per segment
  pool.py       the worker processes and their messages
  scheduler.py  pools the segments of all requests in flight into GPU batches
  recognize.py  one batched Paraformer forward pass: features -> text and timestamps
  cif.py        its integrate-and-fire steps, without a GPU kernel launch per frame
  punctuate.py  per request: join segments, punctuation, sentences with times
  transcriber.py  the `Transcriber` that wires them together
"""
