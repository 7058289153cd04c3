"""The replica's ASGI application without Ray: ASGI messages in, ASGI messages out, checked
against the HTTP behaviour the protocol documents (routes, limits, errors, headers)."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest

from clippy_rt.serve.asgi import build_app, render_json
from clippy_rt.serve.frames import HEADER_LENGTH, REQUEST_TYPE, RESPONSE_TYPE, BinaryBody
from clippy_rt.serve.protocol import RequestError

LIMIT = 1000


class FakeReplica:
    patch_size = 16
    template = "a photo of {}"

    def __init__(self) -> None:
        self.parsed = []  # (how, route or header length, body, thread name)

    def health(self):
        return {"status": "ok", "model": "démo"}

    def stats(self):
        return {"requests": 3}

    def parse(self, route, body):
        if body.get("fail") == "input":
            raise RequestError("'prompts' is missing")
        if body.get("fail") == "server":
            raise MemoryError("out of memory")
        self.parsed.append(("json", route, body, threading.current_thread().name))
        return ("json", route, body)

    def parse_binary(self, header_length, data):
        self.parsed.append(("binary", header_length, bytes(data), threading.current_thread().name))
        return ("binary", header_length)


class Runner:
    def __init__(self, reply=None):
        self.requests = []
        self.reply = reply

    async def __call__(self, request):
        self.requests.append(request)
        if self.reply is not None:
            return self.reply
        return 200, {"echo": list(request[:2])}


def call(app, scope, messages, pause=0.0):
    """Run ``app`` on one connection, each message ``pause`` seconds after the previous
    one was asked for; returns what it sent."""
    sent = []
    incoming = list(messages)

    async def receive():
        if incoming:
            await asyncio.sleep(pause)
            return incoming.pop(0)
        await asyncio.sleep(3600)

    async def send(message):
        sent.append(message)

    async def main():
        await asyncio.wait_for(app(scope, receive, send), 10)

    asyncio.run(main())
    return sent


def http(app, method, path, body=b"", headers=(), chunks=None):
    scope = {"type": "http", "method": method, "path": path,
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers]}
    if chunks is None:
        chunks = [body]
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    sent = call(app, scope, messages)
    if not sent:
        return None
    start, content = sent[0], sent[1]
    assert start["type"] == "http.response.start" and content["type"] == "http.response.body"
    response_headers = {k.decode(): v.decode() for k, v in start["headers"]}
    assert int(response_headers["content-length"]) == len(content["body"])
    return start["status"], response_headers, content["body"]


def make(reply=None, inline_parse_bytes=100):
    replica, runner = FakeReplica(), Runner(reply)
    app = build_app(replica, runner, max_body_bytes=LIMIT, max_pixels=10_000, inline_parse_bytes=inline_parse_bytes)
    return app, replica, runner


def error(response):
    status, headers, body = response
    assert headers["content-type"] == "application/json"
    return status, json.loads(body)["error"]


def test_health_and_stats_are_json():
    app, _, runner = make()
    status, headers, body = http(app, "GET", "/v1/health")
    assert status == 200 and headers["content-type"] == "application/json"
    assert json.loads(body) == {"status": "ok", "model": "démo"}
    assert "démo".encode() in body  # UTF-8, not \u escapes
    status, _, body = http(app, "GET", "/v1/stats")
    assert status == 200 and json.loads(body) == {"requests": 3}
    assert runner.requests == []


@pytest.mark.parametrize("method,path,status", [("GET", "/v1/segment", 405), ("POST", "/v1/health", 405),
                                                ("DELETE", "/v1/classify", 405), ("POST", "/v2/segment", 404),
                                                ("GET", "/", 404), ("HEAD", "/v1/health", 405)])
def test_unknown_routes_and_methods(method, path, status):
    app, _, runner = make()
    got, message = error(http(app, method, path, b"{}"))
    assert got == status and path in message
    assert runner.requests == []


def test_json_request_is_parsed_off_the_event_loop_and_answered():
    app, replica, runner = make()
    data = b'{"labels": ["a"], "pad": "' + b"x" * 100 + b'"}'  # over the inline limit
    status, headers, body = http(app, "POST", "/v1/classify", data, headers=[("Content-Type", "application/json")])
    assert status == 200 and json.loads(body) == {"echo": ["json", "classify"]}
    assert replica.parsed[0][:3] == ("json", "classify", json.loads(data))
    assert replica.parsed[0][3] != threading.current_thread().name
    assert body == b'{"echo":["json","classify"]}'  # compact, as Starlette's JSONResponse


def test_small_json_request_is_parsed_on_the_event_loop():
    app, replica, _ = make()
    data = b'{"labels": ["a"]}'
    assert http(app, "POST", "/v1/classify", data)[0] == 200
    assert replica.parsed[0][1:] == ("classify", {"labels": ["a"]}, threading.current_thread().name)


def test_a_body_of_exactly_the_inline_size_is_parsed_on_the_event_loop():
    app, replica, _ = make(inline_parse_bytes=30)
    data = b'{"labels": ["a"], "p": "1234"}'
    assert len(data) == 30
    assert http(app, "POST", "/v1/classify", data)[0] == 200
    assert replica.parsed[0][3] == threading.current_thread().name


def test_a_body_message_without_more_body_is_the_whole_body():
    app, replica, _ = make()
    scope = {"type": "http", "method": "POST", "path": "/v1/classify", "headers": []}
    sent = call(app, scope, [{"type": "http.request", "body": b'{"labels": ["a"]}'}])
    assert sent[0]["status"] == 200 and replica.parsed[0][2] == {"labels": ["a"]}


def test_a_body_message_without_a_body_key_adds_nothing():
    # ASGI leaves "body" out of an http.request message that carries none.
    app, replica, _ = make()
    scope = {"type": "http", "method": "POST", "path": "/v1/classify", "headers": []}
    sent = call(app, scope, [{"type": "http.request", "more_body": True},
                             {"type": "http.request", "body": b'{"labels": ["a"]}', "more_body": True},
                             {"type": "http.request"}])
    assert sent[0]["status"] == 200 and replica.parsed[0][2] == {"labels": ["a"]}


def test_body_arriving_in_chunks_is_joined():
    app, replica, _ = make()
    assert http(app, "POST", "/v1/segment", chunks=[b'{"image": ', b'"x", ', b'"prompts": ["a"]}'])[0] == 200
    assert replica.parsed[0][2] == {"image": "x", "prompts": ["a"]}


def test_binary_request_and_answer():
    answer = BinaryBody(data=b'{"frames":[]}LABELS', header_length=13)
    app, replica, runner = make(reply=(200, answer), inline_parse_bytes=0)
    frame_header = json.dumps({"prompts": ["a"], "frames": [{"format": "raw", "height": 1, "width": 1}]}).encode()
    data = frame_header + b"\x00\x01\x02"
    status, headers, body = http(app, "POST", "/v1/segment", data,
                                 headers=[("Content-Type", REQUEST_TYPE + "; v=1"),
                                          (HEADER_LENGTH, str(len(frame_header)))])
    assert status == 200 and body == answer.data
    assert headers["content-type"] == RESPONSE_TYPE and headers[HEADER_LENGTH.lower()] == "13"
    assert replica.parsed[0][:3] == ("binary", str(len(frame_header)), data)
    # Raw frames need no decoding: parsed on the event loop itself, whatever their size.
    assert replica.parsed[0][3] == threading.current_thread().name
    assert runner.requests == [("binary", str(len(frame_header)))]


@pytest.mark.parametrize("inline,on_loop", [(0, False), (1000, True)])
def test_encoded_frames_are_parsed_on_the_loop_only_when_small(inline, on_loop):
    app, replica, _ = make(reply=(200, BinaryBody(data=b"{}", header_length=2)), inline_parse_bytes=inline)
    frame_header = json.dumps({"prompts": ["a"], "frames": [{"format": "png", "bytes": 3}]}).encode()
    http(app, "POST", "/v1/segment", frame_header + b"PNG",
         headers=[("Content-Type", REQUEST_TYPE), (HEADER_LENGTH, str(len(frame_header)))])
    assert (replica.parsed[0][3] == threading.current_thread().name) is on_loop
    assert replica.parsed[0][1] == str(len(frame_header))


def test_binary_frames_on_classify_are_refused():
    app, replica, runner = make()
    status, message = error(http(app, "POST", "/v1/classify", b"abc", headers=[("Content-Type", REQUEST_TYPE)]))
    assert status == 415 and "/v1/segment" in message
    assert replica.parsed == [] and runner.requests == []


def test_declared_body_over_the_limit_is_refused_before_reading():
    app, replica, _ = make()
    status, message = error(http(app, "POST", "/v1/segment", b"{}", headers=[("Content-Length", str(LIMIT + 1))]))
    assert status == 413 and str(LIMIT) in message
    assert replica.parsed == []
    # A declared length of exactly the limit is read.
    status, message = error(http(app, "POST", "/v1/segment", b"{", headers=[("Content-Length", str(LIMIT))]))
    assert status == 400 and "not valid JSON" in message


def test_streamed_body_over_the_limit_is_refused():
    app, replica, _ = make()
    status, message = error(http(app, "POST", "/v1/segment", chunks=[b"x" * 600, b"y" * 401]))
    assert status == 413 and str(LIMIT) in message
    assert replica.parsed == []
    # Exactly the limit is taken.
    status, message = error(http(app, "POST", "/v1/segment", chunks=[b"x" * 600, b"y" * 400]))
    assert status == 400 and "not valid JSON" in message


@pytest.mark.parametrize("data,headers,status,words", [
    (b"", (), 400, "empty request body"),
    (b"{", (), 400, "not valid JSON: Expecting property name"),
    (b'{"fail": "input"}', (), 400, "'prompts' is missing"),
    (b"{}", [("Content-Length", "ten")], 400, "invalid Content-Length"),
    (b'{"fail": "server"}', (), 500, "internal error: out of memory"),
])
def test_bad_requests_answer_one_json_line(data, headers, status, words):
    app, _, runner = make()
    got, message = error(http(app, "POST", "/v1/segment", data, headers=headers))
    assert got == status and words in message and "\n" not in message
    assert runner.requests == []


def test_error_status_from_the_batch_is_kept():
    app, _, _ = make(reply=(400, {"error": "prompts differ"}))
    assert error(http(app, "POST", "/v1/segment", b'{"image": "x"}')) == (400, "prompts differ")


def test_an_answer_that_is_not_json_is_a_500():
    app, _, _ = make(reply=(200, {"score": float("nan")}))
    status, message = error(http(app, "POST", "/v1/segment", b'{"image": "x"}'))
    assert status == 500 and "internal error: Out of range float" in message


def test_a_client_that_leaves_before_its_body_gets_nothing():
    app, replica, runner = make()
    scope = {"type": "http", "method": "POST", "path": "/v1/segment", "headers": []}
    sent = call(app, scope, [{"type": "http.request", "body": b"{", "more_body": True}, {"type": "http.disconnect"}])
    assert sent == [] and replica.parsed == [] and runner.requests == []


def test_lifespan_startup_and_shutdown_complete():
    app, _, _ = make()
    sent = call(app, {"type": "lifespan"}, [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


def test_a_websocket_elsewhere_than_the_session_path_is_closed():
    app, _, runner = make()
    sent = call(app, {"type": "websocket", "path": "/v1/segment", "headers": []}, [{"type": "websocket.connect"}])
    assert len(sent) == 1 and sent[0]["type"] == "websocket.close" and sent[0]["code"] == 1008
    assert sent[0]["reason"] == "no session at /v1/segment"
    assert runner.requests == []


def test_a_session_runs_its_frames_through_the_runner():
    app, _, runner = make(reply=(200, BinaryBody(data=b'{"frames":[]}L', header_length=13)))
    header = json.dumps({"id": 7, "format": "raw", "height": 16, "width": 32, "bytes": 16 * 32 * 3}).encode()
    frame = len(header).to_bytes(4, "little") + header + bytes(range(256)) * 6
    sent = call(app, {"type": "websocket", "path": "/v1/session", "headers": [], "query_string": b""},
                [{"type": "websocket.connect"}, {"type": "websocket.receive", "text": '{"prompts": ["a", "b"]}'},
                 {"type": "websocket.receive", "bytes": frame}, {"type": "websocket.disconnect", "code": 1000}],
                pause=0.2)
    assert sent[0]["type"] == "websocket.accept"
    assert json.loads(sent[1]["text"]) == {"classes": ["a", "b"]}
    assert len(runner.requests) == 1 and runner.requests[0].images[0].shape == (16, 32, 3)
    assert runner.requests[0].prompts.prompts == ("a photo of a", "a photo of b")  # the model's template
    answer = sent[2]["bytes"]
    length = int.from_bytes(answer[:4], "little")
    assert json.loads(answer[4:4 + length]) == {"frames": [], "id": 7, "timestamp": None}
    assert answer[4 + length:] == b"L"


def test_unknown_scope_types_are_refused():
    app, _, _ = make()
    with pytest.raises(ValueError, match="unsupported"):
        call(app, {"type": "mqtt"}, [])


@pytest.mark.parametrize("inline,on_loop", [(0, False), (10_000, True)])
def test_session_frames_are_decoded_on_the_loop_only_when_small(monkeypatch, inline, on_loop):
    import clippy_rt.serve.session as session

    threads = []
    original = session.parse_frame_message

    def recording(*args):
        threads.append(threading.current_thread().name)
        return original(*args)

    monkeypatch.setattr(session, "parse_frame_message", recording)
    app, _, _ = make(inline_parse_bytes=inline)
    header = json.dumps({"id": 3, "format": "png", "bytes": 4}).encode()
    frame = len(header).to_bytes(4, "little") + header + b"\x89PNG"
    sent = call(app, {"type": "websocket", "path": "/v1/session", "headers": [], "query_string": b""},
                [{"type": "websocket.connect"}, {"type": "websocket.receive", "text": '{"prompts": ["a", "b"]}'},
                 {"type": "websocket.receive", "bytes": frame}, {"type": "websocket.disconnect", "code": 1000}],
                pause=0.2)
    assert (threads == [threading.current_thread().name]) is on_loop and len(threads) == 1
    assert json.loads(sent[2]["text"])["id"] == 3  # the undecodable PNG is refused alone


def test_a_request_arriving_while_the_replica_stops_gets_a_503():
    from clippy_rt.serve.batcher import Batcher

    replica = FakeReplica()
    batcher = Batcher(lambda requests: [(200, {})] * len(requests), max_frames=4, wait_s=0.0)
    batcher.close()
    app = build_app(replica, batcher, max_body_bytes=LIMIT, max_pixels=10_000)
    status, message = error(http(app, "POST", "/v1/classify", b'{"labels": ["a"]}'))
    assert status == 503 and "shutting down" in message


def test_a_session_frame_arriving_while_the_replica_stops_is_refused_with_its_id():
    from clippy_rt.serve.batcher import Batcher

    batcher = Batcher(lambda requests: [(200, None)] * len(requests), max_frames=4, wait_s=0.0)
    batcher.close()
    app = build_app(FakeReplica(), batcher, max_body_bytes=LIMIT, max_pixels=10_000)
    header = json.dumps({"id": 9, "format": "raw", "height": 16, "width": 16, "bytes": 16 * 16 * 3}).encode()
    frame = len(header).to_bytes(4, "little") + header + bytes(16 * 16 * 3)
    sent = call(app, {"type": "websocket", "path": "/v1/session", "headers": [], "query_string": b""},
                [{"type": "websocket.connect"}, {"type": "websocket.receive", "text": '{"prompts": ["a", "b"]}'},
                 {"type": "websocket.receive", "bytes": frame}, {"type": "websocket.disconnect", "code": 1000}],
                pause=0.2)
    assert json.loads(sent[2]["text"]) == {"id": 9, "error": "the replica is shutting down"}
