"""Start-up and shutdown of `bertserve serve`: the main Encoder and its Batcher, the plug-ins (each task's
engine, batcher and routes: bertserve.serve.plugins), the HTTP and ZeroMQ front-ends.

Shutdown order on SIGINT/SIGTERM, so that every accepted request is answered:
1. the ZeroMQ front-end refuses new encode requests (error reply "shutting down");
2. uvicorn stops accepting connections and waits for the HTTP requests in flight;
3. each plug-in closes (search collections are saved) and its batcher finishes what it holds; then the
   encode batcher finishes what it holds (ZeroMQ requests included) and stops its threads;
4. the ZeroMQ front-end sends the last replies and closes its sockets.
A second signal skips the waiting.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time

from bertserve.engine.batcher import Batcher
from bertserve.engine.metrics import Metrics
from bertserve.errors import Unavailable
from bertserve.serve.config import ServerConfig
from bertserve.serve.plugins import ServeContext, load_plugins
from bertserve.serve.state import ServerState

log = logging.getLogger("bertserve.serve")


def build_state(config: ServerConfig, encoder=None) -> ServerState:
    import torch

    from bertserve import Encoder

    encoder = encoder if encoder is not None else Encoder(config=config.encoder)
    if config.encoder.num_threads is None and config.num_worker > 1:
        # each worker thread runs its own forward pass; more torch threads than cores only adds contention
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // config.num_worker))
    metrics = Metrics()
    batcher = Batcher(encoder, max_batch_tokens=config.max_batch_tokens, max_queue_texts=config.max_queue_texts,
                      max_request_texts=config.max_request_texts, num_worker=config.num_worker, metrics=metrics)
    state = ServerState(config, encoder, batcher, metrics)
    ctx = ServeContext(config, metrics, encoder, batcher)
    state.plugins = load_plugins(ctx)
    state.batchers = [batcher, *ctx.batchers]
    metrics.queue_depth = lambda: sum(b.queued_texts for b in state.batchers)
    return state


class Server:
    def __init__(self, config: ServerConfig, encoder=None):
        self.config = config
        self.state = build_state(config, encoder)
        self.zmq = None
        self.http = None
        self._http_thread = None
        self._stop = threading.Event()
        self.http_port = self.port = self.port_out = None

    def start(self):
        cfg = self.config
        try:
            if cfg.zmq:
                from bertserve.serve.zmq_frontend import ZmqFrontend
                self.zmq = ZmqFrontend(self.state)
                self.port, self.port_out = self.zmq.port, self.zmq.port_out
                self.zmq.start()
            if cfg.http:
                self._start_http()
        except BaseException:
            self.shutdown()
            raise
        return self

    def _start_http(self):
        import uvicorn

        from bertserve.serve.http_app import make_app

        app = make_app(self.state, tuple(p.router for p in self.state.plugins if p.router is not None))
        ucfg = uvicorn.Config(app, host=self.config.host, port=self.config.http_port, access_log=False,
                              log_level=logging.getLogger().getEffectiveLevel(), log_config=None,
                              timeout_graceful_shutdown=self.config.shutdown_timeout, lifespan="off")
        self.http = uvicorn.Server(ucfg)
        self._http_thread = threading.Thread(target=self.http.run, name="bertserve-http", daemon=True)
        self._http_thread.start()
        while not self.http.started:
            if not self._http_thread.is_alive():
                raise Unavailable(f"HTTP server failed to start on {self.config.host}:{self.config.http_port} "
                                   "(port in use? see the log above)")
            time.sleep(0.02)
        self.http_port = self.http.servers[0].sockets[0].getsockname()[1]

    def ready_line(self) -> str:
        enc = self.state.encoder
        return json.dumps({"event": "ready", "model": self.state.model_name, "dim": enc.dim,
                           "host": self.config.host, "http_port": self.http_port, "port": self.port,
                           "port_out": self.port_out, "pid": os.getpid()})

    def serve_forever(self) -> int:
        """Block until SIGINT/SIGTERM (or `request_stop`), then shut down cleanly."""
        def on_signal(signum, frame):
            if self._stop.is_set():
                log.warning("second signal: stopping without waiting for requests in flight")
                if self.http is not None:
                    self.http.force_exit = True
                os._exit(1)
            log.info("received %s: finishing requests in flight", signal.Signals(signum).name)
            self._stop.set()

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            print(self.ready_line(), flush=True)
            while not self._stop.wait(0.5):
                pass
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        return 0 if self.shutdown() else 1

    def request_stop(self):
        self._stop.set()

    def shutdown(self) -> bool:
        """Run the shutdown order above; True when every accepted request was answered in time."""
        deadline = time.monotonic() + self.config.shutdown_timeout
        if self.zmq is not None:
            self.zmq.begin_shutdown()
        if self.http is not None:
            self.http.should_exit = True
            self._http_thread.join(max(0.0, deadline - time.monotonic()) + 1)
        for plugin in self.state.plugins:  # e.g. search collections save themselves on close
            if plugin.close is not None:
                plugin.close(max(0.0, deadline - time.monotonic()))
            if plugin.batcher is not None:
                plugin.batcher.close(timeout=max(0.0, deadline - time.monotonic()))
        drained = self.state.batcher.close(timeout=max(0.0, deadline - time.monotonic()))
        if self.zmq is not None:
            self.zmq.stop(timeout=max(1.0, deadline - time.monotonic()))
        log.info("server stopped (%s)", "all requests answered" if drained else "some requests were cut off")
        return drained


def serve(config: ServerConfig) -> int:
    server = Server(config).start()
    log.info("serving %s: HTTP on %s:%s, ZeroMQ on ports %s/%s", server.state.model_name, config.host,
             server.http_port, server.port, server.port_out)
    return server.serve_forever()

