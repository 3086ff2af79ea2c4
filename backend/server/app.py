"""The HTTP adapter: FastAPI routes over :class:`JobService` (protocol ``/v1``).

Routes are thin: they parse the request, call the service, and map :class:`InputError` to a
4xx JSON body ``{error, advice}``. Long work (decoding, rendering) never runs on the event
loop, so polling stays fast while a render runs. The OpenAPI document describes both request
bodies of ``POST /v1/jobs`` and every error answer, so a fuzzer (tests/test_server_fuzz.py) can
check the server against it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from typing import Any, AsyncIterator, Collection, Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from flamediff import __version__
from flamediff.formats.protocol import PROTOCOL_VERSION, is_loopback_host
from flamediff.server.inputs import InputError, JobSettings, TrackingLimits, parse_json
from flamediff.server.jobs import CorruptManifest
from flamediff.server.security import MAX_BODY_BYTES, BodyTimeout, BodyTooLarge, ConnectionLimits, GuardMiddleware
from flamediff.server.service import JobService
from flamediff.server.tracking import TrackingTasks, tracking_router

log = logging.getLogger("flamediff.server")
#: Largest JSON body (``POST /v1/jobs`` with local paths); it is parsed in a worker thread.
MAX_JSON_BYTES = 1024 * 1024
#: The errors that mean the disk is full (507); any other OSError is the server's fault (500).
DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer."""

    error: str = Field(description="names the problem")
    advice: str = Field(description="what to do about it")


class LocalJobRequest(BaseModel):
    """``POST /v1/jobs`` as JSON: files named by path, for a client on the server's disk (only
    under the folders the server was started with ``--allow-path``)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    reference_path: str = Field(max_length=4096, description="absolute path of a PNG, JPEG or WebP portrait")
    animation_path: str = Field(max_length=4096, description="absolute path of the animation .npz")
    settings: JobSettings | None = None


_ERRORS = {400: "malformed request (bad JSON, too deep, missing field, foreign or malformed Host)",
           401: "missing or wrong token",
           403: "a local path outside the allowed folders", 404: "unknown job or route, frame not rendered yet",
           405: "method not allowed (see the Allow header)", 408: "the request body took too long to arrive",
           409: "FLAME asset mismatch, or a folder holding a different job",
           413: "too large: body, image pixels, animation data or frames", 415: "content type or image format",
           422: "invalid input: animation, image, setting or checkpoint", 507: "the server's disk is full"}


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorBody, "description": _ERRORS[code]} for code in (400, 401, 405, 408, *codes)}


def _png_responses() -> dict[int | str, dict[str, Any]]:
    return {200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
                  "description": "the frame as PNG"}, **_responses(404, 422)}


def _error(status: int, error: str, advice: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "advice": advice}, status_code=status, headers=headers)


async def _read_submission(request: Request, service: JobService) -> tuple[bytes, bytes, Any]:
    """Multipart upload (files ``reference``, ``animation``; field ``settings`` as JSON) or a
    JSON body ``{reference_path, animation_path, settings}`` for a client on the same disk."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form(max_files=2, max_fields=8)
        files = {}
        for name in ("reference", "animation"):
            upload = form.get(name)
            if upload is None or isinstance(upload, str):
                raise InputError(f"the upload has no file field {name!r}",
                                 "send multipart fields 'reference' (image) and 'animation' (.npz)", 400)
            files[name] = await upload.read()  # the stored file name is never used: no path can escape
        raw = form.get("settings") or "{}"
        if not isinstance(raw, str):
            raise InputError("the 'settings' field is a file", "send settings as a plain form field holding JSON", 400)
        return files["reference"], files["animation"], parse_json(raw, "settings")
    if content_type.startswith("application/json"):
        body = await run_in_threadpool(parse_json, await _json_body(request), "body")
        if not isinstance(body, dict):
            raise InputError("the JSON body must be an object", "send {reference_path, animation_path, settings}", 400)
        extra = sorted(set(body) - set(LocalJobRequest.model_fields))
        if extra:
            raise InputError(f"unknown fields {extra[:10]}", "send {reference_path, animation_path, settings}", 422)
        if body.get("settings") is not None and not isinstance(body["settings"], dict):
            raise InputError("settings must be a JSON object", "e.g. {\"steps\": 20, \"seed\": 1}", 422)
        reference = await run_in_threadpool(service.read_local, body.get("reference_path"), "reference")
        animation = await run_in_threadpool(service.read_local, body.get("animation_path"), "animation")
        return reference, animation, body.get("settings")
    raise InputError(f"unsupported content type {content_type[:100] or '(none)'!r}",
                     "send multipart/form-data (upload) or application/json (local paths)", 415)


async def _json_body(request: Request) -> bytes:
    """A JSON body of at most :data:`MAX_JSON_BYTES` (paths and settings need a few kB), refused
    from its Content-Length or as soon as it grows past that, never read whole first."""
    too_large = InputError(f"the JSON body is larger than {MAX_JSON_BYTES >> 10} KiB",
                           "send paths and settings only; upload files as multipart/form-data", 413)
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_JSON_BYTES:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_JSON_BYTES:
            raise too_large
    return bytes(body)


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document plus what it cannot infer: ``POST /v1/jobs`` reads its body itself,
    as multipart (uploads) or JSON (local paths)."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    ref = "#/components/schemas/{model}"
    for model in (JobSettings, LocalJobRequest, ErrorBody):
        schema = model.model_json_schema(ref_template=ref)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    upload = {"type": "object", "required": ["reference", "animation"], "properties": {
        "reference": {"type": "string", "format": "binary", "description": "PNG, JPEG or WebP portrait"},
        "animation": {"type": "string", "format": "binary",
                      "description": "the animation .npz, or a single-file tracker output (see docs/TRACKERS.md)"},
        "settings": {"type": "string", "description": "a JSON object; see the JobSettings schema"}}}
    document["paths"]["/v1/jobs"]["post"]["requestBody"] = {"required": True, "content": {
        "multipart/form-data": {"schema": upload},
        "application/json": {"schema": {"$ref": ref.format(model="LocalJobRequest")}}}}
    app.openapi_schema = document
    return document


def create_app(service: JobService, token: str, max_body_bytes: int = MAX_BODY_BYTES,
               start_worker: bool = True, allowed_hosts: Collection[str] | None = None,
               body_timeout: float = ConnectionLimits.body_timeout,
               tracking: TrackingLimits = TrackingLimits()) -> FastAPI:
    """The app; with ``start_worker`` its lifespan starts the worker and resumes unfinished jobs.
    ``allowed_hosts``: the Host names accepted (``serve`` passes the loopback names on a loopback
    bind); None accepts any host[:port]."""

    tasks = TrackingTasks(os.path.join(service.store.root, "tracks"),  # inside the jobs folder, never listed
                          getattr(service.renderer, "flame_asset", None), tracking)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if start_worker:
            await run_in_threadpool(service.renderer.asset)  # load the FLAME asset before the first request
            await run_in_threadpool(service.renderer.start)  # a render process imports torch meanwhile
            resumed = service.resume_unfinished()
            if resumed:
                log.info("resuming %d unfinished job(s): %s", len(resumed), ", ".join(resumed))
            service.worker.start()
        yield
        # The running job stays 'running' on disk on purpose: the next start resumes it.
        await run_in_threadpool(tasks.stop)

    app = FastAPI(title="flamediff backend", version=__version__, lifespan=lifespan,
                  description=f"flamediff job service, protocol v{PROTOCOL_VERSION}. Every request needs "
                              "'Authorization: Bearer <token>' (the token file 'flamediff serve' prints).")

    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]

    @app.exception_handler(InputError)
    async def input_error(_: Request, exc: InputError) -> JSONResponse:
        return _error(exc.status, exc.error, exc.advice)

    @app.exception_handler(CorruptManifest)
    async def corrupt(_: Request, exc: CorruptManifest) -> JSONResponse:
        return _error(409, str(exc), exc.advice)

    @app.exception_handler(MemoryError)
    async def out_of_memory(_: Request, exc: MemoryError) -> JSONResponse:
        return _error(413, "the request does not fit in the server's memory", "send a smaller image or a shorter clip")

    @app.exception_handler(OSError)
    async def disk(_: Request, exc: OSError) -> JSONResponse:
        log.error("storage error: %s", exc)
        if exc.errno in DISK_FULL:
            return _error(507, "the server's disk is full", "free disk space on the server (its jobs folder), "
                          "then submit again")
        return _error(500, f"the server could not store or read a file ({exc.strerror or type(exc).__name__})",
                      "see the server's log; this is a fault of the server, not of the request")

    @app.exception_handler(BodyTimeout)
    async def too_slow(_: Request, exc: BodyTimeout) -> JSONResponse:
        return _error(408, f"the request body did not arrive within {body_timeout:g} s",
                      "send the request again on a faster connection (serve's --body-timeout sets the limit)",
                      {"connection": "close"})

    @app.exception_handler(BodyTooLarge)
    async def too_large(_: Request, exc: BodyTooLarge) -> JSONResponse:
        return _error(413, f"request body larger than {max_body_bytes >> 20} MiB",
                      "send a smaller reference image or animation, or a local path")

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()))
        return _error(422, f"invalid request: {where}: {first.get('msg', 'invalid')}", "see GET /docs for the schema")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), "see GET /docs for the routes of protocol v1", exc.headers)

    # Polled routes are async on purpose: they read one small file or in-memory state, and a
    # thread-pool hop per poll costs more than the read while a render competes for the GIL.
    @app.get("/v1/health", responses=_responses())
    async def health() -> dict[str, Any]:
        """Protocol and flamediff versions, device, loaded model, FLAME asset hash, queue length."""
        return service.health()

    @app.get("/v1/models", responses=_responses())
    def models(request: Request) -> dict[str, Any]:
        """Checkpoints this server can load: shipped, the models folder, hub ids already cached.
        Their server paths only for clients on this machine."""
        return {"models": service.models(show_paths=request.client is not None and is_loopback_host(request.client.host))}

    @app.post("/v1/jobs", status_code=201, responses={200: {"description": "the same job was submitted before"},
                                                      **_responses(403, 409, 413, 415, 422, 507)})
    async def submit(request: Request) -> JSONResponse:
        """Submit a job; an identical earlier job is returned (200) and renders only missing frames."""
        reference, animation, settings = await _read_submission(request, service)
        view, created = await run_in_threadpool(service.submit, reference, animation, settings)
        return JSONResponse({**view, "created": created}, status_code=201 if created else 200)

    @app.get("/v1/jobs", responses=_responses())
    def list_jobs() -> dict[str, Any]:
        """Every job on disk, oldest first."""
        return {"jobs": service.list_jobs()}

    @app.get("/v1/jobs/{job_id}", responses=_responses(404, 422))
    async def job_status(job_id: str) -> dict[str, Any]:
        """Status, phase, progress 0..1, frames done, ETA (s), error and advice."""
        return service.status(job_id)

    @app.get("/v1/jobs/{job_id}/frames/{frame}", response_class=FileResponse, responses=_png_responses())
    def frame(job_id: str, frame: int) -> FileResponse:
        """A rendered frame (PNG) by Blender frame number; 404 until it is rendered."""
        return FileResponse(service.image_path(job_id, frame), media_type="image/png")

    @app.get("/v1/jobs/{job_id}/control/{frame}", response_class=FileResponse, responses=_png_responses())
    def control(job_id: str, frame: int) -> FileResponse:
        """The splatted control feature map of a frame, coloured by its principal components (PNG)."""
        return FileResponse(service.image_path(job_id, frame, control=True), media_type="image/png")

    @app.delete("/v1/jobs/{job_id}", responses=_responses(404, 409, 422))
    def cancel(job_id: str) -> dict[str, Any]:
        """Cancel: a queued job at once, a running one within one denoising step."""
        return service.cancel(job_id)

    @app.post("/v1/release", responses=_responses())
    def release() -> dict[str, Any]:
        """Free the loaded model and the GPU memory cache (the next job loads it again)."""
        return service.release()

    app.include_router(tracking_router(tasks, _responses(400, 404, 409, 413, 415, 422)))
    app.add_middleware(GuardMiddleware, token=token, max_body_bytes=max_body_bytes, allowed_hosts=allowed_hosts,
                       body_timeout=body_timeout)
    return app
