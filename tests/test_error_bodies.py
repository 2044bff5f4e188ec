"""Unexpected failures reach clients as a short line with an id, never their text (internal paths); the log
holds the traceback under that id. Expected errors keep their one-line message. The engine is a stub here:
the doors are under test, and an internal failure cannot be produced on purpose through a real engine."""

import logging
import re

import httpx
import pytest

from engine.errors import RequestError
from engine.server import create_app, serve_in_background
from handler import serve_job


SECRET = "/opt/worker/engine/secret_module.py line 42: tensor mismatch"


class FailingEngine:
    """Answers every call by raising `error`, as a bug deep inside a pass would."""

    def __init__(self, error: Exception):
        self.error = error

    def handle(self, method, endpoint, payload, on_progress=None):
        raise self.error


JOB = {"id": "job-7f3a", "input": {"api": {"method": "POST", "endpoint": "/sdapi/v1/txt2img"},
                                   "payload": {"prompt": "x"}}}


def test_runpod_answers_an_internal_error_with_the_job_id_only(caplog):
    with caplog.at_level(logging.ERROR):
        output = serve_job(JOB, FailingEngine(RuntimeError(SECRET)))
    assert set(output) == {"error"}
    assert "secret" not in output["error"] and "RuntimeError" not in output["error"]
    assert "internal error" in output["error"] and "job-7f3a" in output["error"]
    logged = [record for record in caplog.records if "job-7f3a" in record.getMessage()]
    assert logged and logged[0].exc_info is not None and SECRET in str(logged[0].exc_info[1])


def test_runpod_keeps_an_expected_errors_text():
    output = serve_job(JOB, FailingEngine(RequestError("width", "must be at least 8 pixels, got 4")))
    assert output == {"error": "width: must be at least 8 pixels, got 4"}


@pytest.fixture(scope="module")
def failing_server():
    engine = FailingEngine(RuntimeError(SECRET))
    with serve_in_background(create_app(engine)) as url, httpx.Client(base_url=url, timeout=30) as http:
        yield http, engine


def test_http_answers_an_internal_error_in_a1111s_shape_with_a_request_id(failing_server, caplog):
    http, engine = failing_server
    engine.error = RuntimeError(SECRET)
    with caplog.at_level(logging.ERROR):
        response = http.post("/sdapi/v1/txt2img", json={"prompt": "x"})
    body = response.json()
    assert response.status_code == 500 and set(body) == {"error", "detail", "body", "errors"}
    assert "secret" not in response.text and "RuntimeError" not in response.text
    request_id = re.search(r"request id ([0-9a-f]+)", body["detail"])[1]
    assert body["errors"] == body["detail"]
    logged = [record for record in caplog.records if request_id in record.getMessage()]
    assert logged and logged[0].exc_info is not None


def test_http_keeps_an_expected_errors_text(failing_server):
    http, engine = failing_server
    engine.error = RequestError("width", "must be at least 8 pixels, got 4")
    response = http.post("/sdapi/v1/txt2img", json={"prompt": "x"})
    assert response.status_code == 422
    assert response.json()["detail"] == "width: must be at least 8 pixels, got 4"


def test_cli_prints_one_line_with_a_request_id(tmp_path, monkeypatch, capsys, caplog):
    from engine import cli

    def broken(args, settings):
        raise RuntimeError(SECRET)

    monkeypatch.setitem(cli.COMMANDS, "models", broken)
    with caplog.at_level(logging.ERROR):
        assert cli.main(["--models", str(tmp_path), "models"]) == 1
    printed = capsys.readouterr().err.strip().splitlines()[-1]
    assert printed.startswith("error: internal error (request id ") and "secret" not in printed
    request_id = re.search(r"request id ([0-9a-f]+)", printed)[1]
    assert any(request_id in record.getMessage() and record.exc_info for record in caplog.records)
