"""The Paraformer `Transcriber`: wires preparation workers, the batch scheduler and punctuation.

A request's life: `transcribe()` registers a job and hands the file to a worker process
(`pool.py`); the worker's segments and features go to the scheduler, which batches them with
everyone else's on the GPU; when a job's last segment is back, a punctuation thread assembles the
transcript and completes the request's future.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import uuid
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from asrfleet.audio import AudioLimits
from asrfleet.config import InstanceConfig
from asrfleet.engines.base import Admission, TranscribeOptions, display_name
from asrfleet.engines.device import available_cpus, pick_device, set_blocking_sync, set_threads
from asrfleet.engines.funasr.graphs import MAX_GRAPH_FRAMES
from asrfleet.engines.funasr.pool import Failed, Message, PreparePool, Retrying
from asrfleet.engines.funasr.prepare import PrepareSettings
from asrfleet.engines.funasr.punctuate import Punctuator
from asrfleet.engines.funasr.recognize import Recognizer
from asrfleet.engines.funasr.scheduler import BatchScheduler, Budget
from asrfleet.engines.funasr.segments import (
    ENCODER_FRAMES_PER_S,
    FEATURE_DIM,
    Attempt,
    Features,
    Segmented,
    SegmentText,
    Span,
)
from asrfleet.errors import AsrError, BadRequest, Busy
from asrfleet.hub import ModelRequest, resolve
from asrfleet.transcript import Transcript

log = logging.getLogger(__name__)


@dataclass
class _Job:
    job_id: str
    path: Path
    future: Future = field(default_factory=Future)
    attempt: int = 0
    duration: float = 0.0
    segments: list[Span] = field(default_factory=list)
    warnings: tuple[str, ...] = ()  # from decoding, for the transcript
    results: dict[int, SegmentText] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    segmented: float = 0.0  # when a worker's segment list came back
    recognized: float = 0.0  # when the last segment's text came back

    @property
    def key(self) -> Attempt:
        """The scheduler's name for this attempt: results of an abandoned attempt are ignored."""
        return Attempt(self.job_id, self.attempt)


@dataclass
class StageTimes:
    """Seconds that the transcribed requests spent in each stage, summed: where latency goes.

    prepare: from arrival until a worker has decoded the file and found its speech (waiting for a
    worker included); recognize: until the GPU has returned the last segment's text (the features'
    transfer and the wait for a batch included); assemble: until the transcript is ready.
    """

    requests: int = 0
    prepare: float = 0.0
    recognize: float = 0.0
    assemble: float = 0.0

    def add(self, job: _Job, done: float) -> None:
        self.requests += 1
        self.prepare += job.segmented - job.started
        self.recognize += job.recognized - job.segmented
        self.assemble += done - job.recognized

    def as_dict(self) -> dict[str, float]:
        return {
            "requests": self.requests,
            "prepare": round(self.prepare, 4),
            "recognize": round(self.recognize, 4),
            "assemble": round(self.assemble, 4),
        }


class FunasrTranscriber:
    def __init__(self, config: InstanceConfig) -> None:
        self.config = config
        self.model_name = display_name(config.model)
        self.device = "cpu"
        self._jobs: dict[str, _Job] = {}
        self._lock = threading.Lock()
        self._admission = Admission(config.max_queue)
        self._pool: PreparePool | None = None
        self._scheduler: BatchScheduler | None = None
        self._recognizer: Recognizer | None = None
        self._finisher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="punctuate")
        self._punctuator = Punctuator()
        self._stages = StageTimes()  # written by the one punctuation thread only

    # -- loading -------------------------------------------------------------------------------

    def load(self) -> None:
        from funasr import AutoModel

        cfg = self.config
        asr_dir, vad_dir, punc_dir = self._model_dirs()
        self.device = pick_device(cfg.device)
        threads = set_threads(cfg.threads, self.device)
        set_blocking_sync(self.device)
        # The GPU thread shares the GIL with the host thread and the worker-result reader;
        # it gives the GIL up at every CUDA sync, and by default waits 5 ms to get it back.
        sys.setswitchinterval(0.0005)
        model, kwargs = AutoModel.build_model(
            model=str(asr_dir), device=self.device, ncpu=threads, disable_update=True, disable_log=True
        )
        recognizer = Recognizer(model, kwargs["tokenizer"], self.device, fp16=cfg.fp16)
        if punc_dir is not None:
            punc_model, punc_kwargs = AutoModel.build_model(
                model=str(punc_dir), device=self.device, ncpu=threads, disable_update=True, disable_log=True
            )
            self._punctuator = Punctuator(punc_model, punc_kwargs)
        budget = measure_budget(recognizer, cfg.batch_size_s, self.device, cfg.gpu_memory_share)
        if self.device.startswith("cuda") and not cfg.no_cuda_graphs:
            # After the budget: graphs are recorded at batch shapes within it.
            recognizer.use_graphs(max_frames=min(MAX_GRAPH_FRAMES, budget.max_frames))
        self._recognizer = recognizer
        self._scheduler = BatchScheduler(
            recognizer.in_two_parts, budget, self._on_results, self._on_batch_error
        )
        self._warm_up(recognizer)
        self._scheduler.start()
        try:
            self._start_workers(asr_dir, vad_dir)
        except BaseException:
            # The audio workers ignore SIGTERM (they outlive a signal to the process group), so
            # multiprocessing's exit, which terminates and then joins them, would wait for ever.
            self.close()
            raise
        self._admission.open()
        log.info(
            "ready: %s on %s, %d audio workers, batches of up to %d padded frames",
            self.model_name,
            self.device,
            self._pool.size,
            budget.max_frames,
        )

    def _start_workers(self, asr_dir: Path, vad_dir: Path) -> None:
        cfg = self.config
        settings = PrepareSettings(
            asr_dir=str(asr_dir),
            vad_dir=str(vad_dir),
            limits=AudioLimits(cfg.max_file_size, cfg.max_duration_s),
        )
        self._pool = PreparePool(settings, self._worker_count(), self._on_message)
        self._pool.wait_ready()

    def _model_dirs(self) -> tuple[Path, Path, Path | None]:
        cfg = self.config
        if cfg.vad_model is None:
            raise ValueError("the paraformer engine needs a VAD model (--vad-model)")

        def get(name: str, option: str) -> Path:
            folder = resolve(ModelRequest(name, "funasr", option), cfg.hub, cfg.model_cache)
            if not any((folder / f).exists() for f in ("config.yaml", "configuration.json")):
                raise ValueError(f"{option} {folder}: not a FunASR model directory (no config.yaml)")
            return folder

        punc = get(cfg.punc_model, "--punc-model") if cfg.punc_model else None
        return get(cfg.model, "--model"), get(cfg.vad_model, "--vad-model"), punc

    def _worker_count(self) -> int:
        if self.config.workers:
            return self.config.workers
        if self.device == "cpu":
            return 1  # the model itself needs the CPUs
        return max(1, min(12, available_cpus() - 2))

    def _warm_up(self, recognizer: Recognizer) -> None:
        """One inference before we say ready: CUDA kernels load, allocator pools fill."""
        rng = np.random.default_rng(0)
        feats = [rng.standard_normal((n, FEATURE_DIM), dtype=np.float32) for n in (40, 90)]
        results = recognizer(feats)
        text = next((r.text for r in results if r.text.strip()), "")
        if text and self._punctuator.model is not None:
            self._punctuator.assemble([SegmentText(text, [])], [(0, 1000)])

    # -- requests --------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._admission.ready

    def transcribe(self, path: Path, options: TranscribeOptions) -> Transcript:
        return self.submit(path, options).result()

    def submit(self, path: Path, options: TranscribeOptions) -> Future:
        """Start a transcription; a future of its `Transcript`. No thread waits for it: the
        engine process answers from the future's callback (`process.py`)."""
        self._admission.enter()
        try:
            if not Path(path).is_file():
                raise BadRequest("the uploaded file is missing")
            job = _Job(job_id=uuid.uuid4().hex, path=Path(path))
            with self._lock:
                self._jobs[job.job_id] = job
        except BaseException:
            self._admission.leave()
            raise
        job.future.add_done_callback(lambda _: self._forget(job))
        try:
            self._pool.submit(job.job_id, job.path)
        except Exception as err:  # e.g. the pool is closing: the job is over before it started
            _settle(job.future, err)
        return job.future

    def _forget(self, job: _Job) -> None:
        """The job is over, done or failed: drop what the pool and the scheduler hold of it."""
        with self._lock:
            self._jobs.pop(job.job_id, None)
        self._pool.forget(job.job_id)
        self._scheduler.cancel(job.key)
        self._admission.leave()

    def _job(self, job_id: str) -> _Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def _on_message(self, job_id: str, message: Message) -> None:
        """From the worker pool's reader thread."""
        job = self._job(job_id)
        if job is None or job.future.done():
            return
        if isinstance(message, Segmented):
            job.duration, job.segments, job.results = message.duration, message.segments, {}
            job.warnings = message.warnings
            job.segmented = time.perf_counter()
        elif isinstance(message, Features):
            items = [(message.first_index + i, f) for i, f in enumerate(message.feats)]
            self._scheduler.add(job.key, job.duration, items)
        elif isinstance(message, Failed):
            _settle(job.future, message.error)
        elif isinstance(message, Retrying):
            self._scheduler.cancel(job.key)
            job.attempt += 1
        else:
            log.error("unexpected worker message %r", message)

    def _on_results(self, key: Attempt, items: list[tuple[int, SegmentText]]) -> None:
        """From the scheduler's host thread."""
        job = self._job(key.job_id)
        if job is None or job.key != key or job.future.done():
            return
        job.results.update(items)
        if job.segments and len(job.results) == len(job.segments):
            job.recognized = time.perf_counter()
            self._finisher.submit(self._finish, job)

    def _on_batch_error(self, key: Attempt, err: BaseException) -> None:
        job = self._job(key.job_id)
        if job is not None:
            _settle(job.future, AsrError("recognition failed on the server; the error is logged"))

    def _finish(self, job: _Job) -> None:
        try:
            results = [job.results[i] for i in range(len(job.segments))]
            assembled = self._punctuator.assemble(results, job.segments)
            done = time.perf_counter()
            transcript = Transcript(
                text=assembled.text,
                sentences=assembled.sentences,
                duration=job.duration,
                language="zh",
                model=self.model_name,
                warnings=job.warnings,
                timings={"total_s": done - job.started},
            )
        except AsrError as err:
            _settle(job.future, err)
        except Exception:
            log.exception("assembling the transcript of job %s failed", job.job_id)
            _settle(job.future, AsrError("assembling the transcript failed; the error is logged"))
        else:
            self._stages.add(job, done)
            _settle(job.future, transcript)

    # -- the rest --------------------------------------------------------------------------------

    def stats(self) -> dict[str, object]:
        s = self._scheduler.stats if self._scheduler else None
        out: dict[str, object] = {
            "in_flight": len(self._jobs),
            "device": self.device,
            "workers": self._pool.size if self._pool else 0,
            "stage_s": self._stages.as_dict(),
        }
        if s is not None and self._scheduler is not None:
            out.update(
                batches=s.batches,
                segments=s.segments,
                mean_batch=round(s.segments / s.batches, 2) if s.batches else 0.0,
                padding_efficiency=round(s.real_frames / s.padded_frames, 3) if s.padded_frames else 1.0,
                gpu_busy_s=round(s.busy_s, 3),
                gpu_thread_cpu_s=round(s.cpu_s, 3),
                host_busy_s=round(s.host_busy_s, 3),
                pending_segments=self._scheduler.pending(),
                batch_budget_frames=self._scheduler.budget.max_frames,
                oom_splits=s.oom_splits,
            )
        if self._recognizer is not None and self._recognizer.clock.batches:
            out.update(self._recognizer.clock.as_dict())
        graphs = self._recognizer.graphs if self._recognizer is not None else None
        if graphs is not None:
            g = graphs.stats
            out.update(
                cuda_graphs=graphs.recorded,
                graph_replays=g.replayed,
                graphs_borrowed=g.borrowed,
                eager_batches=g.eager,
            )
        out.update(gpu_memory(self.device))
        return out

    def close(self) -> None:
        self._admission.close()
        if self._pool is not None:
            self._pool.close()
        if self._scheduler is not None:
            self._scheduler.stop()
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            _settle(job.future, Busy("the instance is shutting down; retry on another"))
        self._finisher.shutdown(wait=False)


def _settle(future: Future, outcome: object) -> None:
    """Complete a job's future, unless it is complete already: another thread failed it first, or
    (an engine in the web process) the client went away and the web app cancelled it."""
    try:
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
    except InvalidStateError:
        pass


def measure_budget(recognizer: Recognizer, batch_size_s: int, device: str, share: float = 0.5) -> Budget:
    """Padded frames per batch: `--batch-size-s`, lowered to what `share` of free GPU memory holds.

    Memory is measured, not guessed: a probe batch runs and the peak it adds per padded frame
    scales the budget.
    """
    frames = int(batch_size_s * ENCODER_FRAMES_PER_S)
    if not device.startswith("cuda"):
        return Budget(max_frames=frames)
    import torch

    probe_items, probe_len = 8, max(50, min(frames // 8, 1000))
    rng = np.random.default_rng(0)
    feats = [rng.standard_normal((probe_len, FEATURE_DIM), dtype=np.float32) for _ in range(probe_items)]
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    recognizer(feats)
    torch.cuda.synchronize()
    per_frame = max(1.0, (torch.cuda.max_memory_allocated() - base) / (probe_items * probe_len))
    free, _ = torch.cuda.mem_get_info()
    fits = int(free * share / per_frame)
    log.info(
        "GPU memory: %.0f bytes per padded frame, %.1f GiB free; batches up to %d frames",
        per_frame,
        free / 2**30,
        min(frames, fits),
    )
    return Budget(max_frames=max(probe_len, min(frames, fits)))


def gpu_memory(device: str) -> dict[str, object]:
    if not device.startswith("cuda"):
        return {}
    import torch

    return {
        "gpu_peak_allocated_bytes": torch.cuda.max_memory_allocated(),
        "gpu_peak_reserved_bytes": torch.cuda.max_memory_reserved(),
        "gpu_allocated_bytes": torch.cuda.memory_allocated(),
    }
