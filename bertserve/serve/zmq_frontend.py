"""bert-as-service's ZeroMQ protocol, as spoken by the unmodified bert-serving-client 1.10.0.

The client PUSHes `[identity, payload, req_id, msg_len]` to `port` and SUBscribes to its identity on
`port_out`. Replies are published as `[identity, json header, array bytes, req_id]` for encode and
`[identity, json dict, req_id]` for SHOW_CONFIG / SHOW_STATUS.

The publishing socket is an XPUB so that the server sees each client's subscription arrive: a client
connects both sockets and sends at once, and a reply published before its subscription reached the server
would be dropped by ZeroMQ and the client would wait forever. Replies to identities not yet subscribed are
held (up to HOLD_S) until the subscription shows up.

One thread owns both sockets (ZeroMQ sockets are not thread-safe). Finished batcher futures hand their
reply over through a queue and wake the thread with a byte on a pipe, which the poller watches alongside
the sockets.

Errors: the client has no error frame, so an error reply is an encode header whose `dtype` is the error
message (and an `error` object for other readers). The real client then raises
`TypeError: data type 'bertserve error ...' not understood`, showing the message, instead of hanging.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
import uuid
from collections import defaultdict

import numpy as np
import zmq

from bertserve.engine.batcher import ServerClosing
from bertserve.errors import BadInput, describe
from bertserve.serve.state import ServerState

log = logging.getLogger("bertserve.serve")

HOLD_S = 10.0
COMMANDS = (b"SHOW_CONFIG", b"SHOW_STATUS", b"TERMINATION")


class ZmqFrontend:
    def __init__(self, state: ServerState):
        self.state = state
        cfg = state.config
        self.ctx = zmq.Context()
        self.pull = self.ctx.socket(zmq.PULL)
        self.pub = self.ctx.socket(zmq.XPUB)
        # results for a slow reader must not be dropped silently; the batcher's queue bounds them
        self.pub.setsockopt(zmq.SNDHWM, 0)
        # port 0 asks the system for a free port, written "*" in ZeroMQ
        self.pull.bind(f"tcp://{cfg.host}:{cfg.port or '*'}")
        self.pub.bind(f"tcp://{cfg.host}:{cfg.port_out or '*'}")
        self.port = _bound_port(self.pull)
        self.port_out = _bound_port(self.pub)
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._subscribed: set[bytes] = set()
        self._held: dict[bytes, list] = defaultdict(list)   # identity -> [(deadline, frames)]
        self._in_flight = 0                                  # requests handed to the batcher, not answered
        self._closing = False
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="bertserve-zmq", daemon=True)

    def start(self):
        self._thread.start()

    def begin_shutdown(self):
        """Refuse new encode requests; answers to accepted ones still go out."""
        self._closing = True
        self._wake()

    def stop(self, timeout: float = 10.0):
        """Wait for accepted requests to be answered, then close the sockets."""
        self._closing = True
        self._stop = True
        self._wake()
        self._thread.join(timeout)

    # ---- loop ----

    def _wake(self):
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):  # pipe full (loop awake anyway) or already closed at exit
            pass

    def _loop(self):
        poller = zmq.Poller()
        poller.register(self.pull, zmq.POLLIN)
        poller.register(self.pub, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        try:
            while not (self._stop and self._in_flight == 0 and self._outbox.empty()):
                events = dict(poller.poll(1000 if self._held or self._stop else None))
                if self.pub in events:
                    self._read_subscriptions()
                if self._wake_r in events:
                    _drain(self._wake_r)
                self._send_finished()
                if self.pull in events:
                    self._read_requests()
                if self._held:
                    self._expire_held()
        except Exception:
            log.exception("ZeroMQ front-end stopped on an unexpected error")
        finally:
            self.pub.setsockopt(zmq.LINGER, 2000)  # let the last replies leave
            self.pull.close(0)
            self.pub.close()
            self.ctx.term()
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _read_subscriptions(self):
        while True:
            try:
                msg = self.pub.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if not msg:
                continue
            identity = msg[1:]
            if msg[0] == 1:
                self._subscribed.add(identity)
                for _, frames in self._held.pop(identity, []):
                    self.pub.send_multipart(frames)
            elif msg[0] == 0:
                self._subscribed.discard(identity)

    def _read_requests(self):
        for _ in range(1000):  # bounded so replies and subscriptions are not starved by a flood
            try:
                frames = self.pull.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                self._handle(frames)
            except Exception:  # a bug on one message must not take the front-end down
                log.exception("ZeroMQ request dropped after an internal error")

    def _handle(self, frames):
        t0 = time.perf_counter()
        if len(frames) != 4:
            log.warning("ZeroMQ message dropped: %d frames, expected [identity, payload, req_id, msg_len]",
                        len(frames))
            self.state.metrics.observe_error("zmq", "malformed_message")
            return
        identity, payload, req_id, msg_len = frames
        if not req_id.isdigit():
            # without a numeric req_id the client could not match a reply, so there is nobody to answer
            log.warning("ZeroMQ message dropped: req_id %r is not a decimal number", req_id[:40])
            self.state.metrics.observe_error("zmq", "malformed_message")
            return
        self.state.metrics.observe_client(identity)
        if payload in COMMANDS:
            self._command(identity, payload, req_id, t0)
            return
        try:
            texts, is_tokenized = _parse_payload(payload, msg_len)
            if self._closing:
                raise ServerClosing("server is shutting down")
            future = self.state.batcher.submit(texts, is_tokenized=is_tokenized,
                                               show_tokens=self.state.config.show_tokens_to_client)
        except Exception as e:
            self._error_reply(identity, req_id, e)
            return
        self._in_flight += 1
        future.add_done_callback(lambda f: self._finished(identity, req_id, f, t0))

    def _command(self, identity, payload, req_id, t0):
        if payload == b"TERMINATION":
            # bert-as-service let any client stop the server this way; here only a signal stops it
            log.warning("ignored a TERMINATION message: stop the server with SIGTERM or Ctrl-C")
            return
        body = self.state.server_config() if payload == b"SHOW_CONFIG" else self.state.server_status()
        self._publish(identity, [identity, json.dumps(body, default=str).encode(), req_id])
        self.state.metrics.observe_request("zmq", payload.decode(), time.perf_counter() - t0)

    def _finished(self, identity, req_id, future, t0):
        # runs on a batcher thread: only hand over, the loop thread does the sending
        self._outbox.put((identity, req_id, future, t0))
        self._wake()

    def _send_finished(self):
        while True:
            try:
                identity, req_id, future, t0 = self._outbox.get_nowait()
            except queue.Empty:
                return
            self._in_flight -= 1
            error = future.exception()
            if error is not None:
                self._error_reply(identity, req_id, error)
                continue
            enc = future.result()
            vectors = np.ascontiguousarray(enc.vectors)
            header = {"dtype": str(vectors.dtype), "shape": list(vectors.shape),
                      "tokens": enc.tokens or ""}
            self._publish(identity, [identity, json.dumps(header).encode(), memoryview(vectors.data), req_id])
            self.state.metrics.observe_request("zmq", "encode", time.perf_counter() - t0)

    def _error_reply(self, identity, req_id, exc):
        report = describe(exc)
        status, type_, message = report.status, report.type, report.message
        if report.internal:
            request_id = uuid.uuid4().hex[:16]
            log.error("internal error while serving a ZeroMQ request (request id %s)", request_id, exc_info=exc)
            message = f"{message}; see the server log, request id {request_id}"
        self.state.metrics.observe_error("zmq", type_)
        # numpy reads commas in a dtype string as a record format and words the error differently
        shown = message.replace(",", ";")
        header = {"dtype": f"bertserve error ({status} {type_}): {shown}", "shape": [0], "tokens": "",
                  "error": {"message": message, "type": type_, "status": status}}
        self._publish(identity, [identity, json.dumps(header).encode(), b"", req_id])

    def _publish(self, identity, frames):
        if identity in self._subscribed:
            self.pub.send_multipart(frames, copy=False)
        else:
            self._held[identity].append((time.monotonic() + HOLD_S, frames))

    def _expire_held(self):
        now = time.monotonic()
        for identity in list(self._held):
            kept = [(d, f) for d, f in self._held[identity] if d > now]
            if len(kept) < len(self._held[identity]):
                log.warning("dropped %d ZeroMQ replies: client %r never subscribed to port_out",
                            len(self._held[identity]) - len(kept), identity[:40])
            if kept:
                self._held[identity] = kept
            else:
                del self._held[identity]


def _parse_payload(payload: bytes, msg_len: bytes):
    try:
        texts = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadInput(f"payload is not valid JSON: {e}") from None
    if not isinstance(texts, list):
        raise BadInput(f"payload must be a JSON list of strings or of token lists, got {type(texts).__name__}")
    if not msg_len.isdigit() or int(msg_len) != len(texts):
        raise BadInput(f"msg_len {msg_len[:20]!r} does not match the {len(texts)} texts sent")
    # as bert-as-service decided it: a list of lists is pre-tokenized input
    is_tokenized = bool(texts) and all(isinstance(t, list) for t in texts)
    return texts, is_tokenized


def _bound_port(sock) -> int:
    return int(sock.getsockopt(zmq.LAST_ENDPOINT).decode().rsplit(":", 1)[1])


def _drain(fd):
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass
