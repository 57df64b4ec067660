"""State a long-running server keeps per client or per request setting stays bounded, whatever clients send:
the soak's memory must not grow with the number of ZeroMQ connections, HTTP methods or search settings."""
from __future__ import annotations

import numpy as np
from fastapi import FastAPI
from fastapi.testclient import TestClient

from bertserve.engine import metrics as metrics_module
from bertserve.engine.metrics import Metrics
from bertserve.search import Collection
from bertserve.search import engine as search_engine
from bertserve.serve.http_app import _Timing


def test_zmq_client_table_is_bounded():
    m = Metrics()
    for i in range(metrics_module.MAX_CLIENTS + 500):
        m.observe_client(b"client-%d" % i)
    m.observe_client(b"client-3")  # seen again: now the most recent
    assert m.active_clients() == metrics_module.MAX_CLIENTS
    assert b"client-3" in m.clients and b"client-4" not in m.clients
    assert m.snapshot()["num_active_client"] == metrics_module.MAX_CLIENTS


def test_http_methods_do_not_make_new_metric_series():
    app = FastAPI()

    @app.api_route("/x", methods=["GET"])
    def x():
        return {}

    m = Metrics()
    with TestClient(_Timing(app, m)) as c:
        assert c.get("/x").status_code == 200
        for i in range(50):
            c.request(f"FOO{i}", "/x")
            c.request(f"BAR{i}", "/nowhere")
    endpoints = {e for _, e in m._requests}
    assert len(endpoints) <= 3 and "GET /x" in endpoints, endpoints
    families = m.render().decode()
    assert "FOO" not in families and "BAR" not in families


def test_search_parameter_objects_kept_are_bounded(tmp_path):
    rng = np.random.default_rng(0)
    xb = rng.random((2000, 16), dtype=np.float32)
    col = Collection.create(tmp_path / "ivf", dim=16, index="IVF16,Flat", metric="l2")
    col.add(vectors=xb, ids=[str(i) for i in range(len(xb))])
    q = xb[:3]
    want = {n: col.search_arrays(q, k=5, params={"nprobe": n})[1] for n in (1, 4)}
    for n in range(1, 200):
        col.search_arrays(q, k=5, params={"nprobe": n})
    assert len(col.vindex._unfiltered_params) <= search_engine.PARAMS_KEPT
    for n, ids in want.items():  # an evicted setting is rebuilt and answers as before
        assert np.array_equal(col.search_arrays(q, k=5, params={"nprobe": n})[1], ids)
    col.close()
