"""FunASR's Paraformer pipeline (VAD, ASR, punctuation), batched across requests.

Stages, in the order audio flows through them:
  prepare.py      (worker processes) decode, voice activity detection, ASR features per segment
    vad_frames.py   FSMN-VAD's per-frame decisions, as FunASR makes them, in less Python
    features.py     ASR features cut from the VAD's filterbank frames
  pool.py         the worker processes and their messages
  scheduler.py    pools the segments of all requests in flight into GPU batches
  recognize.py    one batched Paraformer forward pass: features -> text and timestamps
    graphs.py       the encoder and decoder as CUDA graphs at bucketed shapes
    cif.py          the integrate-and-fire steps, without a GPU kernel launch per frame
    timestamps.py   BiCifParaformer's timestamp head
    token_times.py  each token's start and end from the timestamp head's peaks
    transfers.py    copies between host and GPU that the host does not wait for
    gpu_clock.py    how long the GPU worked, and how long it waited for the host
  punctuate.py    per request: join segments, punctuation, sentences with times
  transcriber.py  the `Transcriber` that wires them together
  segments.py     what the stages hand each other, and the frame geometry they share
"""
