"""The benchmarks' own arithmetic, without a GPU or a fleet."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from benchmarks import cpu
from benchmarks.cpu import (
    Snapshot,
    _roles,
    host_jiffies,
    instance_port,
    placements,
    used,
    waited,
)
from benchmarks.fleet import disturbance, engine_deltas, stage_ms, summarise
from benchmarks.host_cpus import speeds


def _run(config: str, rtfx: float) -> dict:
    return {"config": config, "levels": [{"rtfx": rtfx}]}


def test_one_instance_is_the_mean_of_every_instance_alone():
    result = {
        "runs": [
            _run("instance 0 alone (direct)", 500.0),
            _run("instance 1 alone (direct)", 400.0),
            _run("fleet of 2 via nginx", 855.0),
            _run("1 instance via nginx", 450.0),
        ]
    }
    summarise(result)
    assert result["one_instance_rtfx"] == 450.0
    assert result["one_instance_spread"] == [400.0, 500.0]
    assert [r["vs_one_instance"] for r in result["runs"]] == [1.111, 0.889, 1.9, 1.0]


def test_a_run_where_everything_failed_has_no_ratios():
    result = {"runs": [_run("instance 0 alone (direct)", 0.0), _run("fleet of 2 via nginx", 0.0)]}
    summarise(result)
    assert "one_instance_rtfx" not in result and "vs_one_instance" not in result["runs"][1]


def test_host_cpu_probe_counts_in_every_process():
    rates = speeds(2, 0.2)
    assert len(rates) == 2 and all(r > 0 for r in rates)


def _snapshot(waits: dict[int, tuple[float, float]]) -> Snapshot:
    roles = {1: "web", 2: "engine", 3: "web", 4: "workers"}
    return Snapshot(0.0, {pid: (roles[pid], 0.0) for pid in waits}, waits, 0.0, 0.0, 1.0)


def test_run_queue_waits_add_up_by_role_and_keep_the_event_loops_apart():
    before = _snapshot({1: (1.0, 2.0), 2: (0.0, 0.5), 3: (0.5, 0.5)})
    # pid 4 started during the measurement: all its waiting counts
    after = _snapshot({1: (1.25, 3.0), 2: (0.0, 0.75), 3: (1.0, 1.5), 4: (0.125, 0.5)})
    assert waited(before, after) == {"engine": 0.25, "web": 2.0, "web main thread": 0.75, "workers": 0.5}


def test_roles_follow_the_process_tree():
    spawn = "python3 -c from multiprocessing.spawn import spawn_main; spawn_main() --multiprocessing-fork"
    procs = {
        10: (1, "python3 -m instances --port 6006", 0.0),
        11: (10, spawn, 0.0),  # its engine
        12: (11, spawn, 0.0),  # an audio worker
        13: (1, "python3 -m asrfleet.instance --port 6007", 0.0),  # installed, not from a checkout
        20: (1, "nginx: worker process", 0.0),
        30: (1, "bash", 0.0),
    }
    assert _roles(procs) == {10: "web", 11: "engine", 12: "workers", 13: "web", 20: "nginx"}


def test_an_instance_s_port_comes_from_its_command_line_or_is_the_default():
    assert instance_port("python -m instances --port 6008 --device cuda") == "port 6008"
    assert instance_port("python -m instances --port=6009") == "port 6009"
    assert (
        instance_port("python -m instances --device cuda") == "port 6006"
    )  # the launcher leaves defaults out


# A stand-in for an instance: its command line reads "-m instances --port PORT", it runs on CPU 0
# and starts a child (its "engine") that moves itself to CPUs 0-1 and starts a child of its own (an
# "audio worker") on CPU 1 alone; all then wait for stdin to close.
_FAKE_CHILD = """
import os, subprocess, sys
os.sched_setaffinity(0, {cpus})
{start}
print('ready', flush=True)
sys.stdin.read()
"""
_START_WORKER = """
pipe = subprocess.PIPE
worker = subprocess.Popen([sys.executable, "-c", WORKER], stdin=pipe, stdout=pipe, text=True)
worker.stdout.readline()
"""
_FAKE_WORKER = _FAKE_CHILD.format(cpus="{1}", start="")
_FAKE_ENGINE = f"WORKER = {_FAKE_WORKER!r}\n" + _FAKE_CHILD.format(cpus="{0, 1}", start=_START_WORKER)
_FAKE_INSTANCE = f"ENGINE = {_FAKE_ENGINE!r}\n" + _FAKE_CHILD.format(
    cpus="{0}", start=_START_WORKER.replace("WORKER", "ENGINE").replace("worker", "engine")
)


@pytest.mark.skipif(
    len(os.sched_getaffinity(0)) < 2 or not {0, 1} <= os.sched_getaffinity(0), reason="needs CPUs 0 and 1"
)
def test_placements_report_the_cpus_of_an_instance_s_whole_process_tree():
    port = "65123"  # only a label: nothing listens
    argv = [sys.executable, "-c", _FAKE_INSTANCE, "-m", "instances", "--port", port]
    fake = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert fake.stdout.readline() == "ready\n"
        found = placements()
        assert found[f"port {port}"] == "0-1"  # the web server's CPU 0, its engine's 0-1
        assert found[f"port {port} audio workers"] == "1"  # fewer than the instance's: reported
    finally:
        fake.stdin.close()
        fake.wait(timeout=10)


@pytest.mark.skipif(1 not in os.sched_getaffinity(0), reason="needs CPU 1")
def test_placements_report_the_cpus_of_nginx_s_workers(monkeypatch):
    # A stand-in worker: nginx names its workers "nginx: worker process"; this one runs on CPU 1.
    fake = subprocess.Popen(["bash", "-c", 'exec -a "nginx: worker process" sleep 60'])
    try:
        os.sched_setaffinity(fake.pid, {1})
        deadline = time.monotonic() + 10
        while not _cmdline(fake.pid).startswith("nginx: worker") and time.monotonic() < deadline:
            time.sleep(0.01)
        every = cpu._processes
        monkeypatch.setattr(cpu, "_processes", lambda: {p: v for p, v in every().items() if p == fake.pid})
        assert placements() == {"nginx workers": "1"}
    finally:
        fake.kill()
        fake.wait(timeout=10)


def _cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode()


def test_host_jiffies_count_steal_as_busy_and_guest_time_once():
    # user nice system idle iowait irq softirq steal guest guest_nice
    busy, total, steal = host_jiffies("cpu  100 5 50 800 20 3 2 20 40 0")
    assert (busy, total, steal) == (180.0, 1000.0, 20.0)


def test_used_reports_the_share_stolen_by_the_hypervisor():
    before = Snapshot(0.0, {}, {}, 0.0, host_busy=100.0, host_total=1000.0, host_steal=10.0)
    after = Snapshot(1.0, {}, {}, 2.0, host_busy=400.0, host_total=2000.0, host_steal=60.0)
    shares = used(before, after)
    assert shares["host_busy_share"] == 0.3 and shares["host_steal_share"] == 0.05
    assert shares["load generator"] == 2.0


def test_a_superseded_measurement_counts_for_nothing():
    disturbed = {**_run("instance 0 alone (direct)", 100.0), "superseded": "stolen"}
    again = _run("instance 0 alone (direct)", 400.0)
    result = {"runs": [disturbed, again, _run("fleet of 1 via nginx", 400.0)]}
    summarise(result)
    assert result["one_instance_rtfx"] == 400.0
    assert [r["vs_one_instance"] for r in result["runs"]] == [0.25, 1.0, 1.0]


def _measurement(steal: float, graphs: list[int]) -> dict:
    return {"cpu_s": {"host_steal_share": steal}, "engines": [{"graphs_recorded": n} for n in graphs]}


def test_a_measurement_is_disturbed_by_the_hypervisor_or_by_graph_recordings():
    assert disturbance(_measurement(0.005, [0, 0]), max_steal=0.01, max_graphs=0) is None
    assert "2.0%" in disturbance(_measurement(0.02, [0, 0]), max_steal=0.01, max_graphs=0)
    assert "recorded 3 CUDA graphs" in disturbance(_measurement(0.0, [1, 2]), max_steal=0.01, max_graphs=0)
    assert disturbance(_measurement(0.0, [1, 2]), max_steal=0.01, max_graphs=3) is None
    # an engine that counts no graphs (the baseline's, Whisper's) disturbs nothing
    assert disturbance({"cpu_s": {"host_steal_share": 0.0}, "engines": [{}]}, 0.01, 0) is None


def test_a_fleet_is_compared_with_its_members_alone_just_before_and_after_it():
    # The host slowed down after the first round: the fleet of 2 sits between 500/400 and 300/200.
    result = {
        "runs": [
            _run("instance 0 alone (direct)", 500.0),
            _run("instance 1 alone (direct)", 400.0),
            {**_run("fleet of 2 via nginx", 700.0), "instances": 2},
            {**_run("instance 0 alone (direct)", 50.0), "superseded": "stolen"},
            _run("instance 0 alone (direct)", 300.0),
            _run("instance 1 alone (direct)", 200.0),
            {**_run("1 instance via nginx", 330.0), "instances": 1},
            _run("instance 0 alone (direct)", 100.0),
        ]
    }
    summarise(result)
    fleet, single = result["runs"][2], result["runs"][6]
    assert fleet["alone_around_rtfx"] == 350.0 and fleet["vs_alone_around"] == 2.0
    assert single["alone_around_rtfx"] == 200.0 and single["vs_alone_around"] == 1.65
    assert result["one_instance_rtfx"] == 300.0 and fleet["vs_one_instance"] == 2.333
    assert "vs_alone_around" not in result["runs"][0] and "vs_alone_around" not in result["runs"][3]


def test_the_speed_ups_are_the_means_over_the_rounds():
    alone = [_run("instance 0 alone (direct)", rtfx) for rtfx in (100.0, 200.0, 100.0)]
    result = {
        "runs": [
            alone[0],
            {**_run("fleet of 1 via nginx", 300.0), "instances": 1},  # 2x the 150 around it
            alone[1],
            {**_run("fleet of 1 via nginx", 50.0), "instances": 1, "superseded": "stolen"},
            {**_run("fleet of 1 via nginx", 150.0), "instances": 1},  # 1x
            alone[2],
        ]
    }
    summarise(result)
    assert result["speed_ups"] == {"fleet of 1 via nginx": {"mean": 1.5, "each": [2.0, 1.0]}}


def test_engine_stage_times_become_milliseconds_a_request():
    before = {"requests": 10, "prepare": 1.0, "recognize": 2.0, "assemble": 0.1}
    after = {"requests": 30, "prepare": 2.0, "recognize": 2.5, "assemble": 0.12}
    assert stage_ms(before, after) == {"prepare": 50.0, "recognize": 25.0, "assemble": 1.0}
    assert stage_ms(None, after) == {} and stage_ms(after, after) == {}


def test_engine_deltas_report_both_threads_busy_shares():
    before = {"batches": 10, "segments": 40, "gpu_busy_s": 1.0, "host_busy_s": 0.2, "cuda_graphs": 5}
    after = {"batches": 30, "segments": 240, "gpu_busy_s": 2.9, "host_busy_s": 0.7, "cuda_graphs": 6}
    before["graphs_borrowed"], after["graphs_borrowed"] = 3, 7
    before["gpu_thread_cpu_s"], after["gpu_thread_cpu_s"] = 0.5, 0.7
    older = ("host_busy_s", "gpu_thread_cpu_s")
    older_engine = {k: v for k, v in after.items() if k not in older}
    [delta, old] = engine_deltas([before, before], [after, older_engine], wall_s=2.0)
    assert (delta["batches"], delta["mean_batch"], delta["graphs_recorded"]) == (20, 10.0, 1)
    assert delta["graphs_borrowed"] == 4
    assert (delta["gpu_thread_busy_share"], delta["host_thread_busy_share"]) == (0.95, 0.25)
    assert delta["gpu_thread_cpu_ms_per_batch"] == 10.0
    assert old["host_thread_busy_share"] is None  # an engine from before the host thread
    assert old["gpu_thread_cpu_ms_per_batch"] is None


def test_engine_deltas_report_the_garbage_collectors_pauses():
    before = {"batches": 10, "segments": 40, "gpu_busy_s": 1.0, "gc_pause_s": 0.5, "gc_full_collections": 2}
    after = {"batches": 30, "segments": 240, "gpu_busy_s": 2.9, "gc_pause_s": 0.8, "gc_full_collections": 3}
    older = {k: v for k, v in after.items() if not k.startswith("gc_")}
    [delta, old] = engine_deltas([before, before], [after, older], wall_s=2.0)
    assert (delta["gc_pause_ms"], delta["gc_full_collections"]) == (300.0, 1)
    assert (old["gc_pause_ms"], old["gc_full_collections"]) == (None, None)


def test_warm_up_repeats_while_a_pass_records_a_new_graph(monkeypatch):
    from benchmarks import fleet

    # at the start; before and after pass 1 (a graph recorded); before and after pass 2; at the end
    counts = iter([[5, 5], [5, 5], [7, 5], [7, 5], [7, 5], [7, 5]])
    monkeypatch.setattr(fleet, "graph_counts", lambda members, ports: next(counts))
    passes = []
    monkeypatch.setattr(fleet.load, "run", lambda *a, **k: passes.append(a))
    assert fleet.warm_up([0, 1], fleet.Ports(), "url", [], 4, 1, "openai", passes=3) == [2, 0]
    assert len(passes) == 2


def test_warm_up_stops_after_its_passes_even_while_graphs_are_recorded(monkeypatch):
    from benchmarks import fleet

    graphs = iter(range(100))
    monkeypatch.setattr(fleet, "graph_counts", lambda members, ports: [next(graphs)])
    passes = []
    monkeypatch.setattr(fleet.load, "run", lambda *a, **k: passes.append(a))
    fleet.warm_up([0], fleet.Ports(), "url", [], 4, 1, "openai", passes=3)
    assert len(passes) == 3


@contextmanager
def transcription_server():
    """A stand-in for an instance's `/v1/audio/transcriptions` on a free port, in a thread: its URL
    and the times its requests arrived."""
    import asyncio
    import threading

    from aiohttp import web

    arrivals: list[float] = []

    async def answer(request: web.Request) -> web.Response:
        arrivals.append(time.perf_counter())
        await request.read()
        return web.json_response({"text": ""})

    app = web.Application()
    app.router.add_post("/v1/audio/transcriptions", answer)
    runner = web.AppRunner(app)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}", arrivals
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


def test_the_clock_starts_once_every_client_process_is_ready(tmp_path):
    """No request reaches the server before `on_start` has returned, however long the processes
    took to start and the caller took to read its counters."""
    from benchmarks import load
    from benchmarks.workload import Recording

    audio = tmp_path / "a.wav"
    audio.write_bytes(b"RIFF")
    started: list[float] = []
    called = time.perf_counter()
    with transcription_server() as (url, arrivals):
        measured = load.run_level(
            url,
            "openai",
            [Recording(audio, 1.0)] * 6,
            concurrency=3,
            procs=3,
            timeout=30,
            on_start=lambda: (time.sleep(0.3), started.append(time.perf_counter())),
        )
    samples, wall, client_cpu = measured.samples, measured.wall_s, measured.client_cpu_s
    assert len(started) == 1 and len(samples) == 6 and not [s for s in samples if s.error]
    assert min(arrivals) >= started[0]
    assert 0 < wall <= time.perf_counter() - started[0]
    # the clients' CPU counts from their start too: far less than three interpreters' imports
    assert 0 < client_cpu < 0.5
    # the processes' start and imports (most of the call) are outside the measured wall time
    assert wall < (time.perf_counter() - called) / 2


def test_clients_split_evenly_over_several_urls(tmp_path):
    from benchmarks import load
    from benchmarks.workload import Recording

    audio = tmp_path / "a.wav"
    audio.write_bytes(b"RIFF")
    with transcription_server() as (first, to_first), transcription_server() as (second, to_second):
        samples = load.run_level(
            [first, second], "openai", [Recording(audio, 1.0)] * 8, concurrency=4, procs=4, timeout=30
        ).samples
    assert len(samples) == 8 and not [s for s in samples if s.error]
    assert len(to_first) == len(to_second) == 4


def _fleet_file(*runs: dict, one: float = 100.0, gpus: int = 2) -> dict:
    return {
        "api": "openai",
        "hardware": {"gpus": ["NVIDIA H200"] * gpus, "cpus": 16 * gpus},
        "one_instance_rtfx": one,
        "runs": list(runs),
    }


def _measured(config: str, rtfx: float, **extra) -> dict:
    return {"config": config, "levels": [{"rtfx": rtfx}], **extra}


def test_plot_takes_each_fleets_counted_measurement_through_nginx_and_without():
    from benchmarks.plot import FleetPoint, fleet_points

    steal = "the hypervisor took 5% of the host's CPU time: measured again"
    run = _fleet_file(
        _measured("instance 0 alone (direct)", 100.0),
        _measured("fleet of 2 via nginx", 150.0, superseded=steal, vs_alone_around=1.5),
        _measured("fleet of 2 via nginx", 190.0, vs_alone_around=1.94),
        _measured("2 instances at once (direct)", 180.0, vs_alone_around=1.87),
        _measured("1 instance via nginx", 99.0),
    )
    older = _fleet_file(  # before the instances at once without nginx, and before "alone around"
        _measured("fleet of 4 via nginx", 360.0),
        _measured("fleet of 2 via nginx", 185.0),
        one=95.0,
        gpus=4,
    )
    rounds = {**run, "speed_ups": {"fleet of 2 via nginx": {"mean": 1.91, "each": [1.94, 1.88]}}}
    two, four = "2× H200, 32 CPUs", "4× H200, 64 CPUs"
    assert fleet_points([("new", run), ("old", older), ("rounds", rounds)]) == [
        FleetPoint("new", two, "openai", 2, via_nginx=1.94, direct=1.87, rtfx=190.0, one_instance=100.0),
        FleetPoint("old", four, "openai", 2, 185.0 / 95.0, direct=None, rtfx=185.0, one_instance=95.0),
        FleetPoint("old", four, "openai", 4, 360.0 / 95.0, direct=None, rtfx=360.0, one_instance=95.0),
        FleetPoint("rounds", two, "openai", 2, 1.91, direct=1.87, rtfx=190.0, one_instance=100.0),
    ]


def test_plot_draws_the_committed_results(tmp_path):
    from benchmarks.plot import main

    results = Path(__file__).parents[2] / "benchmarks" / "results"
    out = tmp_path / "plot.png"
    assert main(["--results", str(results), "--out", str(out)]) == 0
    assert out.read_bytes().startswith(b"\x89PNG") and out.stat().st_size > 50_000


def test_pinned_counters_run_where_they_are_put():
    from benchmarks.host_cpus import pinned

    cpus = sorted(os.sched_getaffinity(0))[:2]
    rates = pinned(cpus, 0.1)
    assert sorted(rates) == cpus and all(r > 0 for r in rates.values())


def test_a_measurements_warm_up_sends_so_many_requests_a_client_from_its_own_workload():
    from benchmarks.fleet import warm_up_set

    recordings = ["a", "b", "c"]
    workload = recordings * 2  # two members
    assert warm_up_set(workload, users=2, per_client=1) == ["a", "b"]
    assert warm_up_set(workload, users=2, per_client=2) == ["a", "b", "c", "a"]
    # more than the workload holds: all of it, once
    assert warm_up_set(workload, users=2, per_client=40) == recordings * 2


@pytest.mark.parametrize(
    "module", ["baseline_app", "fleet", "host_cpus", "limit", "load", "one_gpu", "plot", "recognizer"]
)
def test_every_benchmark_s_command_line_builds(module, capsys):
    """Each command line is built only when run on a GPU host: build it here, where a clash of two
    options would otherwise first show there."""
    import importlib

    with pytest.raises(SystemExit) as exited:
        importlib.import_module(f"benchmarks.{module}").main(["--help"])
    assert exited.value.code == 0 and "usage:" in capsys.readouterr().out


def test_the_fleet_benchmark_refuses_a_client_split_it_cannot_make_before_building_anything(tmp_path, capsys):
    from benchmarks import fleet

    argv = [
        "--audio",
        str(tmp_path),
        "--vad-model",
        str(tmp_path),
        "--gpus",
        "2",
        "--out",
        str(tmp_path / "o"),
    ]
    with pytest.raises(SystemExit) as exited:
        fleet.main([*argv, "--procs", "3", "--work", str(tmp_path / "work")])
    assert exited.value.code == 2
    assert "--procs must be a multiple of --gpus" in capsys.readouterr().err
    assert not (tmp_path / "work").exists()  # no model was built


def test_code_version_names_the_commit_and_says_when_the_tree_differs(tmp_path):
    from benchmarks.load import code_version

    assert code_version(tmp_path) is None  # not a repository
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "a.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "a.py"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    head = subprocess.run([*git, "rev-parse", "--short=7", "HEAD"], capture_output=True, text=True).stdout
    head = head.strip()
    assert code_version(tmp_path) == head
    (tmp_path / "a.py").write_text("x = 2\n")
    assert code_version(tmp_path) == f"{head}-dirty"
