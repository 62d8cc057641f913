"""Hostile and malformed input against a real instance: every file and request shape of a generated
corpus gets a clear 4xx (an error body with a message) or a transcript, never a 5xx; the instance
stays alive; the next good request is answered right; nothing is left in its temp folder."""

from __future__ import annotations

import gzip
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import media
import procs

pytestmark = pytest.mark.e2e

CLEAR = {200, 400, 413, 415}


@pytest.fixture(scope="module")
def hostile(paraformer_args, tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    temp = folder / "temp"
    args = [*paraformer_args, "--temp-dir", str(temp), "--max-file-size", "4m", "--max-duration", "600"]
    with procs.instance(args, folder) as running:
        running.temp = temp  # type: ignore[attr-defined]
        yield running


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> tuple[Path, str]:
    """A recording and the text the instance gives it before any hostile input."""
    path = media.write_format(
        tmp_path_factory.mktemp("good"), media.conversation(media.ZH_SENTENCES[:1]), "wav"
    )
    return path, ""


def _post(url: str, name: str, data: bytes, **extra) -> httpx.Response:
    return httpx.post(url + "/v1/audio/transcriptions", files={"file": (name, data)}, timeout=60, **extra)


def _tone(seconds: float = 1.0) -> np.ndarray:
    return (0.3 * np.sin(np.arange(int(16000 * seconds)) / 3)).astype(np.float32)


def corpus(folder: Path) -> list[tuple[str, bytes]]:
    """At least 60 hostile files: containers, codecs, sample formats and headers gone wrong."""
    rng = np.random.default_rng(7)
    pcm = (_tone() * 32767).astype("<i2").tobytes()
    files: list[tuple[str, bytes]] = [("empty.wav", b""), ("one.wav", b"R")]
    files += [(f"random-{n}.wav", rng.bytes(n)) for n in (3, 44, 512, 4096, 65536)]
    files += [(f"random-{n}.mp3", rng.bytes(n)) for n in (10, 1000, 100000)]
    files += [
        ("text.wav", b"hello, this is not audio\n" * 100),
        ("html.mp3", b"<html><body>no</body></html>"),
        ("json.flac", b'{"audio": null}'),
        ("png.wav", b"\x89PNG\r\n\x1a\n" + rng.bytes(2000)),
        ("zip.m4a", b"PK\x03\x04" + rng.bytes(2000)),
        ("elf.ogg", b"\x7fELF" + rng.bytes(2000)),
        ("riff-only.wav", b"RIFF\x00\x00\x00\x00WAVE"),
        ("id3-only.mp3", b"ID3\x04\x00\x00\x00\x00\x00\x00"),
        ("ogg-header.ogg", b"OggS" + rng.bytes(500)),
        ("flac-header.flac", b"fLaC" + rng.bytes(500)),
    ]
    for rate in (0, 1, 100, 3999, 400000, 2**31 - 1):
        files.append((f"rate-{rate}.wav", media.wav_bytes(pcm, rate=rate)))
    for channels in (0, 33, 1000, 65535):
        files.append((f"channels-{channels}.wav", media.wav_bytes(pcm, channels=channels)))
    for bits in (0, 1, 7, 12, 64, 65535):
        files.append((f"bits-{bits}.wav", media.wav_bytes(pcm, bits=bits)))
    for fmt in (0, 2, 0x11, 0xFFFE, 0x1234):
        files.append((f"format-{fmt}.wav", media.wav_bytes(pcm, fmt=fmt)))
    for size in (0, 1, 2**31, 0xFFFFFFFE):
        files.append((f"data-size-{size}.wav", media.wav_bytes(pcm, data_size=size)))
    for value, label in ((np.nan, "nan"), (np.inf, "inf"), (-np.inf, "-inf"), (1e38, "huge")):
        samples = _tone()
        samples[::997] = value
        files.append((f"float-{label}.wav", media.wav_bytes(samples.astype("<f4").tobytes(), bits=32, fmt=3)))
    for count in (1, 80, 160):
        files.append((f"short-{count}.wav", media.wav_bytes(pcm[: 2 * count])))
    files.append(("silence.wav", media.wav_bytes(bytes(len(pcm)))))
    for suffix in ("mp3", "flac", "ogg", "m4a"):
        encoded = media.write_format(folder, media.conversation(media.ZH_SENTENCES[:1]), suffix).read_bytes()
        for cut in (0.05, 0.5):
            files.append((f"cut-{cut}.{suffix}", encoded[: int(len(encoded) * cut)]))
        flipped = bytearray(encoded)
        for i in rng.integers(64, len(flipped), 200):
            flipped[i] ^= 0xFF
        files.append((f"flipped.{suffix}", bytes(flipped)))
        files.append((f"misnamed-{suffix}.wav", encoded))
    files.append(("too-big.wav", media.wav_bytes(bytes(5 * 2**20))))
    names = [
        "nul\x00name.wav",
        "../../etc/passwd",
        "/etc/passwd",
        "a" * 5000 + ".wav",
        "con.wav",
        "\u202eevil.wav",
        "名前.wav",
        "..",
        ".wav",
        "x.\x01\x02",
        "spaces   .wav",
    ]
    files += [(name, media.wav_bytes(pcm)) for name in names]
    assert len(files) >= 60
    return files


def _assert_clear(response: httpx.Response, what: str) -> None:
    assert response.status_code in CLEAR, f"{what}: {response.status_code} {response.text[:300]}"
    if response.status_code != 200:
        message = response.json()["error"]["message"]
        assert message and "Traceback" not in message and "could not be processed" not in message, what


def test_every_hostile_file_gets_a_clear_answer(hostile, good, tmp_path):
    expected = _post(hostile.url, "good.wav", good[0].read_bytes()).json()["text"]
    for i, (name, data) in enumerate(corpus(tmp_path)):
        _assert_clear(_post(hostile.url, name, data), repr(name[:60]))
        assert httpx.get(hostile.url + "/healthz", timeout=5).status_code == 200, name
        if i % 15 == 0:
            assert _post(hostile.url, "good.wav", good[0].read_bytes()).json()["text"] == expected
    assert _post(hostile.url, "good.wav", good[0].read_bytes()).json()["text"] == expected
    assert "Traceback" not in hostile.log.read_text(errors="replace")
    leftovers = [p for p in (hostile.temp / "work" / "uploads").rglob("*")]
    assert leftovers == []


MALFORMED = [
    ({"content-type": "multipart/form-data"}, b"--x\r\n\r\n"),  # no boundary
    ({"content-type": "multipart/form-data; boundary=x"}, b"this is not multipart"),
    ({"content-type": "application/json"}, b'{"file": "a.wav"}'),
    ({"content-type": "text/plain"}, b"a.wav"),
    ({}, b""),
    ({"content-type": "application/x-www-form-urlencoded"}, b"file=a.wav&model=x"),
    ({"content-type": "application/x-www-form-urlencoded"}, b"a=1&" * 2000),  # too many fields
    ({"content-type": "multipart/form-data; boundary=b", "content-encoding": "gzip"}, gzip.compress(b"x")),
]


@pytest.mark.parametrize(("headers", "body"), MALFORMED)
def test_malformed_requests_are_named_4xx(hostile, headers, body):
    response = httpx.post(hostile.url + "/v1/audio/transcriptions", headers=headers, content=body, timeout=30)
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["error"]["message"]


def test_a_form_field_over_the_parser_limit_is_a_400(hostile):
    files = {"file": ("a.wav", b"RIFF")}
    response = httpx.post(
        hostile.url + "/v1/audio/transcriptions", files=files, data={"prompt": "x" * (2 * 2**20)}, timeout=30
    )
    assert response.status_code == 400 and "could not be read" in response.json()["error"]["message"]


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    name=st.text(max_size=300),
    field=st.sampled_from(["file", "File", "audio", "", "file[]"]),
    body=st.binary(max_size=2000),
    extra=st.dictionaries(
        st.sampled_from(["model", "response_format", "language", "prompt", "timestamp_granularities[]"]),
        st.text(max_size=50),
    ),
)
def test_generated_request_shapes_get_clear_answers(hostile, name, field, body, extra):
    response = httpx.post(
        hostile.url + "/v1/audio/transcriptions",
        files={field: (name, body)} if field else None,
        data=extra,
        timeout=30,
    )
    _assert_clear(response, f"{name!r} {field!r} {extra!r}")


def test_the_instance_is_alive_after_it_all(hostile):
    time.sleep(0.5)
    assert hostile.proc.poll() is None
    assert httpx.get(hostile.url + "/readyz", timeout=5).status_code == 200


def test_a_recording_with_a_few_nan_samples_is_transcribed_with_a_warning(hostile):
    samples = media.conversation(media.ZH_SENTENCES[:1]).astype(np.float32)
    samples[::997] = np.nan
    response = _post(hostile.url, "nan.wav", media.wav_bytes(samples.astype("<f4").tobytes(), bits=32, fmt=3))
    assert response.status_code == 200
    assert any("not numbers" in w and "replaced by silence" in w for w in response.json()["warnings"])
