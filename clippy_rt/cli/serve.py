"""Serve a model over HTTP with dynamic batching (Ray Serve).

Endpoints: POST /v1/segment (JSON or binary frames), POST /v1/classify, GET /v1/health,
GET /v1/stats (docs/serving.md). Each replica answers on its own port, --port up to
--port + replicas - 1, with no proxy in front. Without --address a local Ray cluster is
started and stopped with the server; with --address the replicas are placed on the nodes
of that cluster. Ctrl-C or SIGTERM stops the server. Needs the `serve` extra: pip install 'clippy-rt[serve]'.
"""

from __future__ import annotations

import argparse

from .common import add_model_arguments


def add_arguments(parser) -> None:
    from clippy_rt.serve.protocol import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_PIXELS

    add_model_arguments(parser, threads=False)  # --cpus-per-replica sizes each replica
    parser.add_argument("--host", default="127.0.0.1", help="address the replicas' HTTP servers bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000,
                        help="HTTP port of the first replica; the others take the next ports (default: 8000)")
    parser.add_argument("--replicas", type=int, default=1, help="number of replicas, one Engine each (default: 1)")
    parser.add_argument("--max-batch", type=int, default=16,
                        help="most frames one replica runs in one batch; a request with more runs alone (default: 16)")
    parser.add_argument("--batch-wait-ms", type=float, default=5.0,
                        help="longest a request waits for others to batch with while the replica's engine is free (default: 5)")
    parser.add_argument("--cpus-per-replica", type=float, default=1.0,
                        help="Ray CPUs reserved per replica; torch uses as many threads (default: 1)")
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                        help=f"largest accepted request body; larger ones get 413 (default: {DEFAULT_MAX_BODY_BYTES})")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help=f"largest accepted image in pixels; larger ones get 413 (default: {DEFAULT_MAX_PIXELS})")
    parser.add_argument("--text-cache-dir", default=None,
                        help="where each replica keeps text embeddings on disk (default: ~/.cache/clippy-rt/text)")
    parser.add_argument("--text-cache", action=argparse.BooleanOptionalAction, default=True,
                        help="cache text embeddings on disk, so a restarted replica does not encode its "
                             "prompts again (default: on)")
    parser.add_argument("--replicas-per-gpu", type=int, default=1,
                        help="replicas sharing one GPU, each taking 1/N of it in Ray (default: 1)")
    parser.add_argument("--drain-s", type=float, default=1.0,
                        help="seconds a stopping replica keeps answering before it closes its port (default: 1)")
    parser.add_argument("--gil-switch-ms", type=float, default=0.1,
                        help="Python's thread switch interval in each replica: how long request handling may "
                             "keep the GIL from the engine thread (default: 0.1; Python's own is 5)")
    parser.add_argument("--address", default=None,
                        help="join the Ray cluster at this address (e.g. 127.0.0.1:6379) instead of starting one")


def run(args) -> int:
    from clippy_rt.api import resolve_model_path
    from clippy_rt.serve import ServeOptions, require_ray, serve_until_stopped

    import clippy_rt

    require_ray()
    # Load once here so a bad model directory fails in a second, before Ray starts.
    engine = clippy_rt.load(args.model, backend=args.backend, device=args.device, precision=args.precision)
    model = str(args.model) if str(args.model) == "demo" else str(resolve_model_path(args.model).resolve())
    options = ServeOptions(model=model, backend=engine.backend, device=args.device, precision=args.precision,
                           host=args.host, port=args.port, replicas=args.replicas, max_batch=args.max_batch,
                           batch_wait_ms=args.batch_wait_ms, cpus_per_replica=args.cpus_per_replica,
                           max_body_bytes=args.max_body_bytes, max_pixels=args.max_pixels, address=args.address,
                           drain_s=args.drain_s, replicas_per_gpu=args.replicas_per_gpu,
                           gil_switch_ms=args.gil_switch_ms,
                           text_cache_dir=(str(args.text_cache_dir) if args.text_cache_dir else None)
                           if args.text_cache else False)
    return serve_until_stopped(options)
