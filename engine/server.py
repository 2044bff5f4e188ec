"""The HTTP door: A1111's `/sdapi/v1/*` API on FastAPI + uvicorn, served from the shared endpoint table."""

import contextlib
import inspect
import logging
import socket
import threading
from collections.abc import Iterator
from typing import Any

from fastapi import Body, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine.errors import EngineError, NotFoundError, RequestError, internal_error_message, new_request_id
from engine.wire.routes import GENERATION_REQUESTS, HTTP_FIELDS, ROUTES, route


logger = logging.getLogger(__name__)


class PngInfoRequest(BaseModel):
    """A1111 `PNGInfoRequest`."""

    image: str


# HTTP status per error kind. A1111 answers bad input with 4xx from HTTPException and anything else with 500;
# the body always has its four keys (`api_middleware.handle_exception`).
STATUS = ((NotFoundError, 404), (RequestError, 422), (EngineError, 500))


def create_app(engine) -> FastAPI:
    """An A1111-compatible API over `engine`: every endpoint of `ROUTES`, A1111's request models (so malformed
    bodies get FastAPI's 422 as in A1111) and A1111's error bodies `{"error", "detail", "body", "errors"}`.

    Engine calls run in worker threads, so the event loop keeps answering (`GET /progress` while a job runs);
    generation itself is queued by the engine, one job at a time.
    """
    from engine import __doc__ as description
    from engine.upscale.extras import ExtrasSingleImageRequest

    bodies: dict[str, Any] = {
        **GENERATION_REQUESTS,
        "extra_single_image": ExtrasSingleImageRequest,
        "png_info": PngInfoRequest,
        "set_options": dict[str, Any],
    }
    app = FastAPI(title="A1111-compatible image worker on diffusers", description=description)
    for path, methods in ROUTES.items():
        for method, name in methods.items():
            body = bodies.get(name) if method == "POST" else None
            app.add_api_route(f"/{path}", _endpoint(engine, method, path, body), methods=[method], name=name)

    @app.exception_handler(StarletteHTTPException)
    async def unknown_route(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Unknown paths and wrong methods: a one-line message naming the path or method, listing what is served.
        try:
            route(request.method, request.url.path, HTTP_FIELDS)
        except EngineError as error:
            return error_response(error, exc.status_code)
        return error_response(exc, exc.status_code, detail=str(exc.detail))

    return app


def _endpoint(engine, method: str, path: str, body_model: Any):
    """The FastAPI endpoint for one route; its signature declares the request body model, if any."""

    async def call(request: Request, body: Any = None) -> JSONResponse:
        if body is None:
            payload = dict(request.query_params) if method == "GET" else {}
        else:
            payload = body.model_dump(exclude_unset=True) if isinstance(body, BaseModel) else body
        try:
            result = await run_in_threadpool(engine.handle, method, path, payload)
        # Every failure becomes A1111's error body; unexpected ones are logged in full.
        except Exception as exc:
            return error_response(exc)
        return JSONResponse(jsonable_encoder(result))

    parameters = [inspect.Parameter("request", inspect.Parameter.KEYWORD_ONLY, annotation=Request)]
    if body_model is not None:
        parameters.append(
            inspect.Parameter(
                "body", inspect.Parameter.KEYWORD_ONLY, annotation=body_model, default=Body(...)
            )
        )
    call.__signature__ = inspect.Signature(parameters)
    return call


def error_response(exc: Exception, status: int | None = None, detail: str | None = None) -> JSONResponse:
    """A1111's error body. Known errors carry their one-line message; an unexpected one is logged with its
    traceback under a new request id and answered (500) with that id only: its text may hold internal paths."""
    if status is None:
        status = next((code for kind, code in STATUS if isinstance(exc, kind)), 500)
    if isinstance(exc, EngineError | StarletteHTTPException):
        name, message = type(exc).__name__, str(exc)
    else:
        request_id = new_request_id()
        logger.error("request %s failed", request_id, exc_info=exc)
        name, message, detail = "InternalError", internal_error_message(request_id), None
    body = {"error": name, "detail": detail or message, "body": "", "errors": message}
    return JSONResponse(status_code=status, content=body)


def serve(engine, host: str = "127.0.0.1", port: int = 7860, log_level: str = "info") -> None:
    """Run the API until interrupted (A1111's default port is 7860)."""
    import uvicorn

    logger.info("serving the A1111 API on http://%s:%d/sdapi/v1 (docs at /docs)", host, port)
    uvicorn.run(create_app(engine), host=host, port=port, log_level=log_level)


@contextlib.contextmanager
def serve_in_background(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run `app` on a real uvicorn server in a thread (port 0: a free one) and yield its base URL; the server
    is stopped on exit. For tests and for programs that embed the API."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the HTTP server failed to start")
            thread.join(0.01)
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
