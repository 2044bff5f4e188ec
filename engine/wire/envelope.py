"""The RunPod job input: the `{"api": {...}, "payload": {...}}` envelope or a bare txt2img payload."""

from dataclasses import dataclass
from typing import Any

from engine.errors import RequestError


TXT2IMG = "sdapi/v1/txt2img"
IMG2IMG = "sdapi/v1/img2img"


@dataclass(frozen=True)
class ApiCall:
    """One A1111 API call: `endpoint` without its leading slash, e.g. "sdapi/v1/txt2img"."""

    method: str
    endpoint: str
    payload: dict[str, Any]


def parse_job_input(job_input: Any) -> ApiCall:
    """Read a RunPod job's `input` in either form clients send.

    - The de-facto standard envelope (ashleykleynhans worker, the seeds):
      `{"api": {"method": "POST", "endpoint": "/sdapi/v1/txt2img"}, "payload": {...}}`.
    - The official worker-a1111 form: `input` *is* a txt2img payload.
    """
    if not isinstance(job_input, dict):
        raise RequestError("input", f"must be a JSON object, got {type(job_input).__name__}")
    if "api" not in job_input:
        if "payload" in job_input:
            raise RequestError(
                "input.api", 'missing: expected {"method": "GET"|"POST", "endpoint": "/sdapi/v1/..."}'
            )
        return ApiCall("POST", TXT2IMG, job_input)
    api = job_input["api"]
    if not isinstance(api, dict):
        raise RequestError(
            "input.api", 'must be an object like {"method": "POST", "endpoint": "/sdapi/v1/txt2img"}'
        )
    method = api.get("method")
    if not isinstance(method, str) or method.upper() not in ("GET", "POST"):
        raise RequestError("input.api.method", f"must be 'GET' or 'POST', got {method!r}")
    endpoint = api.get("endpoint")
    if not isinstance(endpoint, str) or not endpoint.strip("/"):
        raise RequestError(
            "input.api.endpoint", f"must be an endpoint path like '/sdapi/v1/txt2img', got {endpoint!r}"
        )
    payload = job_input.get("payload")
    if payload is None and method.upper() == "GET":
        payload = {}
    if not isinstance(payload, dict):
        raise RequestError("input.payload", f"must be a JSON object, got {type(payload).__name__}")
    return ApiCall(method.upper(), endpoint.strip().strip("/"), payload)
