"""The endpoint table both doors (RunPod envelope, HTTP server) dispatch through."""

from engine.errors import NotFoundError, RequestError


# endpoint (no leading slash) → {HTTP method: Engine method name}
ROUTES: dict[str, dict[str, str]] = {
    "sdapi/v1/txt2img": {"POST": "txt2img"},
    "sdapi/v1/sd-models": {"GET": "sd_models"},
    "sdapi/v1/samplers": {"GET": "samplers"},
    "sdapi/v1/schedulers": {"GET": "schedulers"},
    "sdapi/v1/options": {"GET": "options"},
}


def route(method: str, endpoint: str) -> str:
    """The Engine method serving `method endpoint`, or an error listing what is served."""
    endpoint = endpoint.strip("/")
    methods = ROUTES.get(endpoint)
    if methods is None:
        served = [f"{m} /{path}" for path, table in ROUTES.items() for m in table]
        raise NotFoundError("api.endpoint", f"/{endpoint} is not supported; supported: {', '.join(served)}")
    if method.upper() not in methods:
        raise RequestError("api.method", f"/{endpoint} accepts {' or '.join(methods)}, got {method!r}")
    return methods[method.upper()]
