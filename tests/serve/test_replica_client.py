"""``Replica`` (batch grouping, per-request errors, counters) and ``Client`` (types,
retries, errors) without Ray: the client talks to a small stdlib HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from PIL import Image

import clippy_rt
from clippy_rt.serve.client import Client
from clippy_rt.results import Segmentation
from clippy_rt.errors import InputError, ServerError
from clippy_rt.serve.frames import HEADER_LENGTH, REQUEST_TYPE, RESPONSE_TYPE, BinaryBody
from clippy_rt.serve.protocol import RequestError
from clippy_rt.serve.replica import Replica

PROMPTS = ["a cat", "a dog", "the sky"]


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return clippy_rt.load(tiny_model_dir)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(3)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for shape in [(32, 48, 3), (40, 40, 3), (24, 56, 3),
                                                                       (32, 32, 3), (48, 24, 3)]]


def body(image, prompts=PROMPTS, **extra):
    import base64
    import io

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return dict({"image": base64.b64encode(buffer.getvalue()).decode(), "prompts": prompts}, **extra)


class CountingEngine:
    """The real engine, recording how many images each call (``segment``, or a call of a
    ``stream``) got; fails a call holding an image 40 pixels wide, as an engine does on
    input it cannot take."""

    def __init__(self, engine):
        self.engine = engine
        self.calls = []
        self.streams = []  # the keyword arguments of each stream made

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def _count(self, images):
        self.calls.append(len(images))
        widths = [image.size[0] if isinstance(image, Image.Image) else image.shape[1] for image in images]
        if 40 in widths:
            raise InputError("width 40 is not supported")

    def segment(self, images, prompts, **kwargs):
        self._count(images)
        return self.engine.segment(images, prompts, **kwargs)

    def stream(self, prompts, **kwargs):
        self.streams.append(kwargs)
        stream = self.engine.stream(prompts, **kwargs)

        def run(frames):
            self._count(frames)
            return stream(frames)

        return run


def test_run_batch_groups_by_key_and_matches_engine(engine, images):
    counting = CountingEngine(engine)
    replica = Replica(counting, model="tiny")
    bodies = [body(images[0]), body(images[2], size=16), body(images[3]), body(images[4]),
              body(images[0], prompts=["a dog", "a cat"])]
    requests = [replica.parse("segment", item) for item in bodies]
    replies = replica.run_batch(requests)
    # Keys: PROMPTS (3 requests), PROMPTS at size 16, the swapped prompts.
    assert sorted(counting.calls) == [1, 1, 3]
    expected = [engine.segment(Image.fromarray(images[0]), PROMPTS),
                engine.segment(Image.fromarray(images[2]), PROMPTS, size=16),
                engine.segment(Image.fromarray(images[3]), PROMPTS),
                engine.segment(Image.fromarray(images[4]), PROMPTS),
                engine.segment(Image.fromarray(images[0]), ["a dog", "a cat"])]
    from clippy_rt.serve.protocol import segmentation_from_json

    for (status, reply), want in zip(replies, expected):
        assert status == 200
        got = segmentation_from_json(reply)
        assert got.prompts == want.prompts
        assert torch.equal(got.labels, want.labels)
    stats = replica.stats()
    assert stats["batch_sizes"] == {"5": 1}
    assert stats["engine_calls"] == {"1": 2, "3": 1}
    assert (stats["requests"], stats["failed"]) == (5, 0)


def test_one_bad_request_fails_alone(engine, images):
    counting = CountingEngine(engine)
    replica = Replica(counting)
    requests = [replica.parse("segment", body(image)) for image in (images[0], images[1], images[3])]
    replies = replica.run_batch(requests)
    assert [status for status, _ in replies] == [200, 400, 200]
    assert replies[1][1] == {"error": "width 40 is not supported"}
    assert counting.calls == [3, 1, 1, 1]
    want = engine.segment(Image.fromarray(images[3]), PROMPTS)
    from clippy_rt.serve.protocol import segmentation_from_json

    assert torch.equal(segmentation_from_json(replies[2][1]).labels, want.labels)
    assert replica.stats()["failed"] == 1


def test_replica_classify_health_and_unknown_kind(engine, images):
    replica = Replica(engine, model="tiny")
    request = replica.parse("classify", {"image": body(images[1])["image"], "labels": PROMPTS, "top_k": 2})
    [(status, reply)] = replica.run_batch([request])
    want = engine.classify(Image.fromarray(images[1]), PROMPTS, top_k=2)
    assert status == 200
    assert [name for name, _ in reply["labels"]] == [name for name, _ in want]
    assert [p for _, p in reply["labels"]] == pytest.approx([p for _, p in want], abs=1e-6)
    assert replica.health() == {"status": "ok", "model": "tiny", "backend": "torch", "device": "cpu",
                                "precision": "fp32", "random_weights": True}
    with pytest.raises(RequestError) as info:
        replica.parse("detect", {})
    assert info.value.status == 404


# ---------------------------------------------------------------------------------------
# Client against a stdlib server


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # a client that timed out and left: expected in the timeout test


class Server:
    """A ThreadingHTTPServer on 127.0.0.1 answering through a Replica; ``drop_first`` closes
    that many connections without an answer, ``delay_s`` sleeps before answering."""

    def __init__(self, replica, drop_first=0, delay_s=0.0):
        self.replica = replica
        self.drop_first = drop_first
        self.delay_s = delay_s
        self.attempts = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _answer(self, status, payload):
                if isinstance(payload, BinaryBody):
                    data, kind = payload.data, RESPONSE_TYPE
                else:
                    data, kind = json.dumps(payload).encode(), "application/json"
                self.send_response(status)
                self.send_header("Content-Type", kind)
                if isinstance(payload, BinaryBody):
                    self.send_header(HEADER_LENGTH, str(payload.header_length))
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, payload, binary=False):
                server.attempts += 1
                if server.attempts <= server.drop_first:
                    self.close_connection = True
                    return
                time.sleep(server.delay_s)
                if self.path == "/v1/health":
                    return self._answer(200, server.replica.health())
                if self.path == "/v1/boom":
                    return self._answer(500, {"error": "boom"})
                try:
                    if binary:
                        request = server.replica.parse_binary(self.headers.get(HEADER_LENGTH), payload)
                    else:
                        request = server.replica.parse(self.path.rsplit("/", 1)[-1], payload)
                except RequestError as exc:
                    return self._answer(exc.status, {"error": str(exc)})
                self._answer(*server.replica.run_batch([request])[0])

            def do_GET(self):
                self._handle(None)

            def do_POST(self):
                data = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Type") == REQUEST_TYPE:
                    self._handle(data, binary=True)
                else:
                    self._handle(json.loads(data))

        self.httpd = QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_client_returns_engine_types(engine, images, tmp_path):
    path = tmp_path / "scene.png"
    Image.fromarray(images[2]).save(path)
    with Server(Replica(engine, model="tiny")) as server, Client(server.url, retries=0) as client:
        got = client.segment(path, {"animal": ["a cat", "a dog"], "sky": ["the sky"]}, resize="crop", scores=True)
        want = engine.segment(str(path), {"animal": ["a cat", "a dog"], "sky": ["the sky"]}, resize="crop")
        assert isinstance(got, Segmentation)
        assert got.prompts == want.prompts == ("animal", "sky")
        assert got.crop_box == want.crop_box and got.crop_box is not None
        assert torch.equal(got.labels, want.labels)
        torch.testing.assert_close(got.scores, want.scores, rtol=0, atol=0)
        assert got.fractions() == pytest.approx(want.fractions())
        several = client.segment([images[0], images[3]], PROMPTS, size=[16, 24])
        for image, result in zip((images[0], images[3]), several):
            assert torch.equal(result.labels, engine.segment(image, PROMPTS, size=(16, 24)).labels)
            assert result.scores.shape == (0,)
        ranked = client.classify(images[1], PROMPTS, top_k=3)
        want_ranked = engine.classify(images[1], PROMPTS, top_k=3)
        assert [name for name, _ in ranked] == [name for name, _ in want_ranked]
        assert client.health()["model"] == "tiny"


def test_client_raises_request_error_on_4xx_and_server_error_on_5xx(engine, images):
    with Server(Replica(engine)) as server, Client(server.url, retries=0) as client:
        with pytest.raises(RequestError, match=r"\(400\): 'prompts': the prompt list is empty") as info:
            client.segment(images[0], [])
        assert info.value.status == 400
        with pytest.raises(ServerError, match="server error 500 .*boom"):
            client._request("GET", "/v1/boom")


def test_client_retries_dropped_connections(engine):
    with Server(Replica(engine), drop_first=2) as server:
        assert Client(server.url, retries=2, backoff_s=0.01).health()["status"] == "ok"
        assert server.attempts == 3
    with Server(Replica(engine), drop_first=2) as server:
        with pytest.raises(ServerError, match="after 2 attempt"):
            Client(server.url, retries=1, backoff_s=0.01).health()
        assert server.attempts == 2


def test_client_connection_refused_and_timeout(engine):
    with Server(Replica(engine)) as server:
        url = server.url
    started = time.monotonic()
    with pytest.raises(ServerError, match="after 3 attempt.*ConnectionRefusedError"):
        Client(url, retries=2, backoff_s=0.05).health()
    assert time.monotonic() - started >= 0.05 + 0.1
    with Server(Replica(engine), delay_s=1.0) as server:
        with pytest.raises(ServerError, match="timed out"):
            Client(server.url, timeout=0.2, retries=0).health()


def test_client_rejects_bad_arguments():
    for url in ("127.0.0.1:8000", "ftp://host", "http://"):
        with pytest.raises(InputError, match="url"):
            Client(url)
    with pytest.raises(InputError, match="timeout"):
        Client(timeout=0)
    with pytest.raises(InputError, match="retries"):
        Client(retries=-1)
    with pytest.raises(InputError, match="one string"):
        Client().segment(np.zeros((8, 8, 3), np.uint8), "cat")


def test_binary_client_returns_engine_labels_and_dtype_in_one_request(engine, images, tmp_path):
    path = tmp_path / "scene.jpg"
    Image.fromarray(images[2]).save(path, quality=90)
    counting = CountingEngine(engine)
    frames = [images[0], path, images[3], Image.fromarray(images[4])]
    with Server(Replica(counting, model="tiny")) as server, Client(server.url, retries=0) as client:
        assert client.protocol == "binary"
        got = client.segment(frames, PROMPTS, size=[16, 24])
        single = client.segment(images[3], {"animal": ["a cat", "a dog"], "sky": ["the sky"]}, resize="crop")
        json_client = Client(server.url, retries=0, protocol="json")
        over_json = json_client.segment(images[3], PROMPTS)
    # One request, one engine call for the four frames.
    assert counting.calls[0] == 4 and server.attempts == 3
    for frame, result in zip(frames, got):
        want = engine.segment(str(frame) if not isinstance(frame, (np.ndarray, Image.Image)) else frame, PROMPTS,
                              size=(16, 24))
        assert result.labels.dtype == want.labels.dtype == torch.uint8
        assert torch.equal(result.labels, want.labels)
        assert result.prompts == want.prompts and result.scores.shape == (0,)
    want = engine.segment(images[3], {"animal": ["a cat", "a dog"], "sky": ["the sky"]}, resize="crop")
    assert isinstance(single, Segmentation) and single.crop_box == want.crop_box
    assert single.labels.dtype == torch.uint8 and torch.equal(single.labels, want.labels)
    assert over_json.labels.dtype == torch.uint8
    assert torch.equal(over_json.labels, engine.segment(images[3], PROMPTS).labels)


def test_binary_client_zlib_labels_and_bad_frames(engine, images):
    with Server(Replica(engine)) as server:
        got = Client(server.url, retries=0, labels="zlib").segment([images[1], images[4]], PROMPTS)
        for image, result in zip((images[1], images[4]), got):
            assert torch.equal(result.labels, engine.segment(image, PROMPTS).labels)
        with pytest.raises(RequestError, match=r"\(400\): frame 0 is 2x2 pixels"):
            Client(server.url, retries=0).segment(np.zeros((2, 2, 3), np.uint8), PROMPTS)


def test_json_and_binary_requests_share_an_engine_call(engine, images):
    from clippy_rt.serve.frames import encode_frames, frame_of, segmentations_from_binary
    from clippy_rt.serve.protocol import segmentation_from_json

    counting = CountingEngine(engine)
    replica = Replica(counting)
    length, data = encode_frames([frame_of(images[0]), frame_of(images[3])], PROMPTS)
    requests = [replica.parse("segment", body(images[4])), replica.parse_binary(length, data)]
    (status_json, reply_json), (status_binary, reply_binary) = replica.run_batch(requests)
    assert counting.calls == [3] and (status_json, status_binary) == (200, 200)
    assert torch.equal(segmentation_from_json(reply_json).labels, engine.segment(images[4], PROMPTS).labels)
    back = segmentations_from_binary(reply_binary.header_length, reply_binary.data)
    assert [torch.equal(r.labels, engine.segment(i, PROMPTS).labels) for r, i in zip(back, (images[0], images[3]))] \
        == [True, True]
    assert replica.stats()["engine_calls"] == {"3": 1}


def test_client_spreads_threads_over_replica_urls(engine):
    with Server(Replica(engine)) as first, Server(Replica(engine)) as second:
        client = Client([first.url, second.url], retries=0)
        threads = [threading.Thread(target=client.health) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert (first.attempts, second.attempts) == (2, 2)
    with Server(Replica(engine)) as alive:
        dead = "http://127.0.0.1:1"
        # A refused connection moves on to the next URL.
        assert Client([dead, alive.url], retries=1, backoff_s=0.01).health()["status"] == "ok"


class SessionServer:
    """``clippy_rt.serve.session`` on a uvicorn server on 127.0.0.1, each frame run through a
    Replica alone after ``delay_s``; ``runs`` counts the frames run."""

    def __init__(self, replica, delay_s=0.0):
        import asyncio

        uvicorn = pytest.importorskip("uvicorn", reason="sessions need the serve extra (uvicorn, websockets)")
        pytest.importorskip("websockets", reason="sessions need the serve extra (uvicorn, websockets)")
        from starlette.applications import Starlette
        from starlette.routing import WebSocketRoute

        from clippy_rt.serve.session import PATH, serve_session

        self.runs = 0
        # Each session's WebSocket extensions as the client asked for them (None: none).
        self.extensions = []

        async def run(request):
            self.runs += 1
            await asyncio.sleep(delay_s)
            return await asyncio.get_running_loop().run_in_executor(None, lambda: replica.run_batch([request])[0])

        async def endpoint(websocket):
            self.extensions.append(websocket.headers.get("sec-websocket-extensions"))
            await serve_session(websocket, replica.patch_size, replica.max_pixels, None, run,
                                model_template=replica.template)

        app = Starlette(routes=[WebSocketRoute(PATH, endpoint)])
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=30)


def test_session_answers_in_order_with_ids_timestamps_and_refusals(engine, images, monkeypatch):
    frames = [images[i % len(images)] for i in range(7)]
    frames[3] = np.zeros((2, 2, 3), np.uint8)  # refused: smaller than a patch
    # A proxy configured for the machine's other traffic is not used, as Client's HTTP
    # requests use none: nothing listens on port 9.
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    with SessionServer(Replica(engine)) as server:
        client = Client(server.url, retries=0)
        with client.stream({"animal": ["a cat", "a dog"], "sky": ["the sky"]}, in_flight=3, max_pending=10) as session:
            assert session.classes == ("animal", "sky")
            for index, frame in enumerate(frames):
                session.submit(frame, frame_id=f"f{index}", timestamp=100.0 + index)
            answers = session.answers(wait=True)
        assert session.close() == []
        with pytest.raises(RequestError, match="refused the session.*'prompts'"):
            client.stream([])
    assert [answer.frame_id for answer in answers] == [f"f{i}" for i in range(7)]
    assert [answer.timestamp for answer in answers] == [100.0 + i for i in range(7)]
    assert session.sent == 7 and session.dropped == 0 and server.runs == 6
    # Frames and labels go uncompressed: per-message deflate costs the replica CPU per frame.
    assert server.extensions == [None, None]
    assert isinstance(answers[3].error, RequestError) and answers[3].segmentation is None
    assert "smaller than one" in str(answers[3].error)
    for index, (frame, answer) in enumerate(zip(frames, answers)):
        if index != 3:
            assert answer.error is None
            want = engine.segment(frame, {"animal": ["a cat", "a dog"], "sky": ["the sky"]})
            assert answer.segmentation.labels.dtype == torch.uint8
            assert torch.equal(answer.segmentation.labels, want.labels), index


def test_session_drops_stale_frames_when_the_server_is_slow(engine, images):
    with SessionServer(Replica(engine), delay_s=0.5) as server:
        session = Client(server.url, retries=0).stream(PROMPTS, in_flight=1, max_pending=1)
        for frame_id in range(5):
            session.submit(images[frame_id], frame_id=frame_id)
        answers = session.close()
    # Frame 0 went out at once; 1-3 were overtaken while waiting; 4, the newest, went next.
    assert [answer.frame_id for answer in answers] == [0, 4]
    assert (session.sent, session.dropped, server.runs) == (2, 3, 2)
    assert torch.equal(answers[1].segmentation.labels, engine.segment(images[4], PROMPTS).labels)
    with pytest.raises(InputError, match="closed"):
        session.submit(images[0])
    with pytest.raises(InputError, match="in_flight"):
        Client().stream(PROMPTS, in_flight=0)


def test_session_refuses_bad_frame_messages_and_keeps_going(engine, images):
    pytest.importorskip("websockets", reason="sessions need the serve extra (uvicorn, websockets)")
    from websockets.sync.client import connect

    from clippy_rt.serve.frames import frame_of
    from clippy_rt.serve.session import LENGTH

    with SessionServer(Replica(engine)) as server:
        with connect(server.url.replace("http", "ws") + "/v1/session") as socket:
            socket.send(json.dumps({"prompts": PROMPTS}))
            assert json.loads(socket.recv(timeout=30)) == {"classes": list(PROMPTS)}
            kind, data, (height, width) = frame_of(images[0])
            head = json.dumps({"id": 5, "format": "raw", "bytes": len(data), "height": height, "width": width}).encode()
            socket.send(LENGTH.pack(len(head)) + head + data[:-7])  # truncated
            assert json.loads(socket.recv(timeout=30)) == {
                "id": 5, "error": f"the frame's header declares {len(data)} bytes, the message carries {len(data) - 7}"}
            socket.send(b"\x01\x00")  # no header length
            assert "header's length" in json.loads(socket.recv(timeout=30))["error"]
            socket.send("a text frame")
            assert json.loads(socket.recv(timeout=30))["error"] == "frames are binary messages"
            socket.send(LENGTH.pack(len(head)) + head + data)
            answer = socket.recv(timeout=30)
            (length,) = LENGTH.unpack_from(answer)
            assert json.loads(answer[4:4 + length])["id"] == 5
        # A client that leaves with a frame in flight: the server goes on with the next one.
        with connect(server.url.replace("http", "ws") + "/v1/session") as socket:
            socket.send(json.dumps({"prompts": PROMPTS}))
            socket.recv(timeout=30)
            socket.send(LENGTH.pack(len(head)) + head + data)
        with Client(server.url, retries=0).stream(PROMPTS) as session:
            session.submit(images[2], frame_id="after")
            [answer] = session.answers(wait=True)
        assert answer.frame_id == "after"
        assert torch.equal(answer.segmentation.labels, engine.segment(images[2], PROMPTS).labels)


def test_every_segment_request_runs_on_the_stream_path_and_matches_segment(engine, images):
    from clippy_rt.serve.frames import encode_frames, frame_of, segmentations_from_binary

    replica = Replica(engine, stream_batch=2)
    raw = [frame_of(images[i]) for i in (0, 2, 0, 0, 3)]  # sizes A, B, A, A, C: chunks of one size, at most 2
    requests = [replica.parse_binary(*encode_frames(raw[:3], PROMPTS, size=[16, 24])),
                replica.parse_binary(*encode_frames(raw[3:], PROMPTS, size=[16, 24])),
                replica.parse_binary(*encode_frames([frame_of(_png(images[1]))], PROMPTS, size=[24, 16])),
                replica.parse_binary(*encode_frames(raw[:2], ["a dog", "a tree"], resize="crop"))]
    replies = replica.run_batch(requests)
    got = [segmentations_from_binary(reply.header_length, reply.data) for _, reply in replies]
    cases = ((images_of(0, 2, 0, 0, 3, source=images), got[0] + got[1], PROMPTS, {"size": (16, 24)}),
             ([images[1]], got[2], PROMPTS, {"size": (24, 16)}),
             (images_of(0, 2, source=images), got[3], ["a dog", "a tree"], {"resize": "crop"}))
    for frames, results, prompts, kwargs in cases:
        assert len(results) == len(frames)
        for frame, result in zip(frames, results):
            want = engine.segment(frame, prompts, **kwargs)
            assert torch.equal(result.labels, want.labels) and result.crop_box == want.crop_box
    # Raw frames and the decoded PNG went through a Stream, one per prompt set, size and resize.
    assert [set(results[0].timings_ms) for results in got] == [{"stream"}] * 4
    assert len(replica._streams) == 3
    # So does a JSON request (a PNG); a request holding a PIL image, not parsed by the
    # replica, goes through Engine.segment.
    from clippy_rt.serve.protocol import parse_segment, segmentation_from_json

    json_request = replica.parse("segment", body(images[4], size=[16, 24]))
    by_hand = parse_segment(body(images[4], size=[16, 24]), replica.patch_size, model_template=replica.template)
    assert isinstance(json_request.image, np.ndarray) and isinstance(by_hand.image, Image.Image)
    [(_, streamed)], [(_, segmented)] = replica.run_batch([json_request]), replica.run_batch([by_hand])
    assert set(streamed["timings_ms"]) == {"stream"}
    assert set(segmented["timings_ms"]) == {"preprocess", "text", "image", "postprocess"}
    want = engine.segment(images[4], PROMPTS, size=(16, 24)).labels
    assert torch.equal(segmentation_from_json(streamed).labels, want)
    assert torch.equal(segmentation_from_json(segmented).labels, want)


def images_of(*indices, source):
    return [source[i] for i in indices]


def _png(array):
    import io

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_streams_are_kept_per_key_reused_and_the_least_recently_used_goes_first(engine, images):
    from clippy_rt.serve.replica import MAX_STREAMS

    counting = CountingEngine(engine)
    replica = Replica(counting, stream_batch=3)
    sizes = [16 * (index + 1) for index in range(MAX_STREAMS + 1)]
    for size in sizes[:MAX_STREAMS]:
        [(status, _)] = replica.run_batch([replica.parse("segment", body(images[0], size=size))])
        assert status == 200
    assert len(counting.streams) == MAX_STREAMS
    assert all(kwargs["batch"] == 3 and kwargs["size"] == size
               for kwargs, size in zip(counting.streams, sizes))
    # Used again: no new stream; the first size becomes the most recently used.
    replica.run_batch([replica.parse("segment", body(images[3], size=sizes[0]))])
    assert len(counting.streams) == MAX_STREAMS
    # One key more than the replica keeps: the least recently used (the second size) goes.
    replica.run_batch([replica.parse("segment", body(images[0], size=sizes[-1]))])
    assert len(replica._streams) == MAX_STREAMS
    replica.run_batch([replica.parse("segment", body(images[0], size=sizes[0]))])
    assert len(counting.streams) == MAX_STREAMS + 1
    replica.run_batch([replica.parse("segment", body(images[0], size=sizes[1]))])
    assert len(counting.streams) == MAX_STREAMS + 2


def test_a_bad_request_alone_in_its_group_fails_alone_and_counters_add_up(engine, images):
    counting = CountingEngine(engine)
    replica = Replica(counting)
    good = [replica.parse("segment", body(images[0])), replica.parse("segment", body(images[3]))]
    bad = replica.parse("segment", body(images[1], size=16))  # 40 wide: the engine refuses it
    replies = replica.run_batch([bad, *good])
    assert replies[0] == (400, {"error": "width 40 is not supported"})
    assert [status for status, _ in replies[1:]] == [200, 200]
    replies = replica.run_batch([replica.parse("segment", body(images[4])), bad])
    assert [status for status, _ in replies] == [200, 400]
    stats = replica.stats()
    assert (stats["requests"], stats["failed"]) == (5, 2)
    assert stats["batch_sizes"] == {"2": 1, "3": 1}
    assert stats["engine_calls"] == {"1": 1, "2": 1}
    # A failed call of one request is not run again on its own.
    assert counting.calls == [1, 2, 1, 1]


def test_the_replicas_pixel_limit_holds_for_every_kind_of_request(engine, images):
    from clippy_rt.serve.frames import encode_frames, frame_of

    replica = Replica(engine, max_pixels=32 * 32)
    with pytest.raises(RequestError, match="more than the limit of 1024") as caught:
        replica.parse("segment", body(images[0]))  # 48 x 32
    assert caught.value.status == 413
    with pytest.raises(RequestError, match="more than the limit of 1024"):
        replica.parse("classify", {"image": body(images[0])["image"], "labels": PROMPTS})
    for frame in (frame_of(images[0]), frame_of(_png(images[0]))):
        with pytest.raises(RequestError, match="more than the limit of 1024"):
            replica.parse_binary(*encode_frames([frame], PROMPTS))
    assert replica.parse("segment", body(images[3])).image.shape == (32, 32, 3)  # at the limit


def test_decoded_images_of_any_mode_become_rgb_arrays():
    from clippy_rt.serve.replica import _rgb_array

    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    array = _rgb_array(Image.fromarray(gray, mode="L"))
    assert array.dtype == np.uint8 and array.shape == (3, 4, 3)
    assert all(np.array_equal(array[:, :, channel], gray) for channel in range(3))
    rgb = np.random.default_rng(5).integers(0, 256, (3, 4, 3), dtype=np.uint8)
    assert np.array_equal(_rgb_array(Image.fromarray(rgb)), rgb)
    palette = Image.fromarray(rgb).convert("P")
    assert np.array_equal(_rgb_array(palette), np.asarray(palette.convert("RGBA"))[:, :, :3])
    assert _rgb_array(rgb) is rgb


def test_request_frames_counts_each_requests_images(engine, images):
    """What --max-batch counts: every frame of a binary request, one image otherwise."""
    from clippy_rt.serve.frames import encode_frames, frame_of
    from clippy_rt.serve.replica import request_frames

    replica = Replica(engine)
    three = replica.parse_binary(*encode_frames([frame_of(image) for image in images[:3]], PROMPTS))
    one = replica.parse_binary(*encode_frames([frame_of(images[3])], PROMPTS))
    assert [request_frames(three), request_frames(one)] == [3, 1]
    assert request_frames(replica.parse("segment", body(images[4]))) == 1
    assert request_frames(replica.parse("classify", {"image": body(images[0])["image"], "labels": ["a cat"]})) == 1


def test_answers_are_encoded_on_the_loop_or_a_thread_never_on_the_engine_thread(engine, images, monkeypatch):
    import asyncio

    from clippy_rt.serve import replica as replica_module
    from clippy_rt.serve.asgi import answering
    from clippy_rt.serve.batcher import Batcher
    from clippy_rt.serve.frames import encode_frames, frame_of, segmentations_from_binary
    from clippy_rt.serve.protocol import segmentation_from_json

    where = {}  # what was encoded (kind, label shapes, encoding) -> the thread that encoded it

    def key(name, args):
        if name == "segmentation_to_json":
            return name, tuple(args[0].labels.shape)
        if name == "segmentations_to_binary":
            return name, tuple(tuple(result.labels.shape) for result in args[0]), args[1]
        return (name,)

    for name in ("segmentation_to_json", "segmentations_to_binary", "classification_to_json"):
        def recording(*args, _original=getattr(replica_module, name), _name=name):
            where[key(_name, args)] = threading.current_thread().name
            return _original(*args)
        monkeypatch.setattr(replica_module, name, recording)
    # Labels come back at the frame's size: 272 x 256 is past INLINE_ANSWER_PIXELS, 32 x 48 is not.
    rng = np.random.default_rng(5)
    large = rng.integers(0, 256, (272, 256, 3), dtype=np.uint8)
    at_limit = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)  # exactly INLINE_ANSWER_PIXELS
    assert large.shape[0] * large.shape[1] > replica_module.INLINE_ANSWER_PIXELS == 256 * 256
    replica = Replica(engine)
    requests = [replica.parse("segment", body(images[0])),
                replica.parse_binary(*encode_frames([frame_of(images[1])], PROMPTS)),
                replica.parse("segment", body(large)),
                replica.parse_binary(*encode_frames([frame_of(large)], PROMPTS, labels="zlib")),
                replica.parse_binary(*encode_frames([frame_of(large)], PROMPTS)),
                replica.parse("segment", body(at_limit)),
                replica.parse_binary(*encode_frames([frame_of(at_limit)], PROMPTS, labels="zlib")),
                replica.parse("classify", {"image": body(large)["image"], "labels": PROMPTS})]
    batcher = Batcher(replica.compute_batch, max_frames=16, wait_s=0.2, name="the-engine-thread")
    try:
        async def main():
            run = answering(replica, batcher)
            return threading.current_thread().name, await asyncio.gather(*(run(r) for r in requests))

        loop_thread, replies = asyncio.run(main())
    finally:
        batcher.close()
    assert replica.stats()["batch_sizes"] == {"8": 1}
    assert all(status == 200 for status, _ in replies)
    want_small = [engine.segment(images[i], PROMPTS).labels for i in (0, 1)]
    want_large = engine.segment(large, PROMPTS).labels
    assert torch.equal(segmentation_from_json(replies[0][1]).labels, want_small[0])
    assert torch.equal(segmentation_from_json(replies[2][1]).labels, want_large)
    for (_, reply), want, encoding in zip([replies[1], replies[3], replies[4]], [want_small[1], want_large, want_large],
                                          ["raw", "zlib", "raw"]):
        [got] = segmentations_from_binary(reply.header_length, reply.data)
        assert torch.equal(got.labels, want)
        assert json.loads(reply.data[:reply.header_length])["frames"][0]["encoding"] == encoding
    assert torch.equal(segmentation_from_json(replies[5][1]).labels, engine.segment(at_limit, PROMPTS).labels)
    assert [name for name, _ in replies[7][1]["labels"]] == [name for name, _ in engine.classify(large, PROMPTS)]
    assert "the-engine-thread" not in where.values()
    # PNG and zlib labels up to 256 x 256 pixels, raw labels and classifications on the loop;
    # larger PNG and zlib answers on a thread.
    on_loop = {key: thread == loop_thread for key, thread in where.items()}
    assert on_loop == {("segmentation_to_json", (32, 48)): True,
                       ("segmentations_to_binary", ((40, 40),), "raw"): True,
                       ("segmentation_to_json", (272, 256)): False,
                       ("segmentations_to_binary", ((272, 256),), "zlib"): False,
                       ("segmentations_to_binary", ((272, 256),), "raw"): True,
                       ("segmentation_to_json", (256, 256)): True,
                       ("segmentations_to_binary", ((256, 256),), "zlib"): True,
                       ("classification_to_json",): True}


def test_an_answer_that_cannot_be_encoded_is_a_500_alone(engine, images, monkeypatch):
    from clippy_rt.serve import replica as replica_module
    from clippy_rt.serve.protocol import segmentation_from_json

    original = replica_module.segmentation_to_json

    def failing(result, return_scores=False):
        if result.labels.shape[1] == 48:
            raise ValueError("Out of range float values are not JSON compliant\nmore")
        return original(result, return_scores)

    monkeypatch.setattr(replica_module, "segmentation_to_json", failing)
    replica = Replica(CountingEngine(engine))  # which fails on images 40 pixels wide
    requests = [replica.parse("segment", body(images[0])), replica.parse("segment", body(images[3])),
                replica.parse("segment", body(images[1]))]
    outcomes = replica.compute_batch(requests)
    assert outcomes[2] == (400, {"error": "width 40 is not supported"})
    assert replica.stats()["failed"] == 1
    replies = [replica.answer(request, outcome) for request, outcome in zip(requests, outcomes)]
    assert replies[0] == (500, {"error": "internal error: Out of range float values are not JSON compliant"})
    assert replies[1][0] == 200
    assert torch.equal(segmentation_from_json(replies[1][1]).labels, engine.segment(images[3], PROMPTS).labels)
    assert replies[2] == outcomes[2]
    assert (replica.stats()["requests"], replica.stats()["failed"]) == (3, 2)


def test_classify_requests_use_their_size_and_resize(engine, images):
    replica = Replica(engine)
    image = images[2]  # 24 x 56: each resize mode and size sees other pixels
    answers = []
    for size, resize in [(None, "crop"), (16, "crop"), ([16, 32], "squash"), ([16, 32], "letterbox")]:
        request = {"image": body(image)["image"], "labels": PROMPTS, "top_k": 3, "resize": resize}
        if size is not None:
            request["size"] = size
        [(status, reply)] = replica.run_batch([replica.parse("classify", request)])
        want = engine.classify(Image.fromarray(image), PROMPTS, top_k=3,
                               size=tuple(size) if isinstance(size, list) else size, resize=resize)
        assert status == 200
        assert [name for name, _ in reply["labels"]] == [name for name, _ in want]
        assert [p for _, p in reply["labels"]] == pytest.approx([p for _, p in want], abs=1e-6)
        answers.append(sorted(reply["labels"]))
    assert all(answers[i] != answers[j] for i in range(4) for j in range(i))  # the settings matter here
