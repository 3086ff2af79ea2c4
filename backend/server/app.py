"""The HTTP adapter: FastAPI routes over :class:`JobService` (protocol ``/v1``).

Routes are thin: they parse the request, call the service, and map :class:`InputError` to a
4xx JSON body ``{error, advice}``. Long work (decoding, rendering) never runs on the event
loop, so polling stays fast while a render runs.
"""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from backend import __version__
from backend.server import PROTOCOL_VERSION
from backend.server.inputs import InputError
from backend.server.security import MAX_BODY_BYTES, BodyTooLarge, GuardMiddleware
from backend.server.service import JobService, read_local

log = logging.getLogger("flamediff.server")


def _error(status: int, error: str, advice: str) -> JSONResponse:
    return JSONResponse({"error": error, "advice": advice}, status_code=status)


async def _read_submission(request: Request) -> tuple[bytes, bytes, dict[str, Any] | None]:
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
        settings = _parse_json(raw, "settings")
        return files["reference"], files["animation"], settings
    if content_type.startswith("application/json"):
        body = _parse_json((await request.body()).decode("utf-8", "replace"), "body")
        if not isinstance(body, dict):
            raise InputError("the JSON body must be an object", "send {reference_path, animation_path, settings}", 400)
        extra = sorted(set(body) - {"reference_path", "animation_path", "settings"})
        if extra:
            raise InputError(f"unknown fields {extra}", "send {reference_path, animation_path, settings}", 422)
        if body.get("settings") is not None and not isinstance(body["settings"], dict):
            raise InputError("settings must be a JSON object", "e.g. {\"steps\": 20, \"seed\": 1}", 422)
        reference = await run_in_threadpool(read_local, body.get("reference_path"), "reference")
        animation = await run_in_threadpool(read_local, body.get("animation_path"), "animation")
        return reference, animation, body.get("settings")
    raise InputError(f"unsupported content type {content_type or '(none)'!r}",
                     "send multipart/form-data (upload) or application/json (local paths)", 415)


def _parse_json(text: str, what: str) -> Any:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InputError(f"{what} is not valid JSON ({exc})", "send a JSON object", 400) from None
    if what == "settings" and not isinstance(value, dict):
        raise InputError("settings must be a JSON object", "e.g. {\"steps\": 20, \"seed\": 1}", 422)
    return value


def create_app(service: JobService, token: str, max_body_bytes: int = MAX_BODY_BYTES,
               start_worker: bool = True) -> FastAPI:
    """The app; with ``start_worker`` its lifespan starts the worker and resumes unfinished jobs."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if start_worker:
            await run_in_threadpool(service.cache.asset)  # load the FLAME asset before the first request
            if hasattr(service.cache, "start"):
                await run_in_threadpool(service.cache.start)  # the render process imports torch meanwhile
            resumed = service.resume_unfinished()
            if resumed:
                log.info("resuming %d unfinished job(s): %s", len(resumed), ", ".join(resumed))
            service.worker.start()
        yield
        # The running job stays 'running' on disk on purpose: the next start resumes it.

    app = FastAPI(title="flamediff backend", version=__version__, lifespan=lifespan,
                  description=f"flamediff job service, protocol v{PROTOCOL_VERSION}. Every request needs "
                              "'Authorization: Bearer <token>' (the token file 'flamediff serve' prints).")

    @app.exception_handler(InputError)
    async def input_error(_: Request, exc: InputError) -> JSONResponse:
        return _error(exc.status, exc.error, exc.advice)

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
        return _error(exc.status_code, str(exc.detail), "see GET /docs for the routes of protocol v1")

    # Polled routes are async on purpose: they read one small file or in-memory state, and a
    # thread-pool hop per poll costs more than the read while a render competes for the GIL.
    @app.get("/v1/health")
    async def health() -> dict[str, Any]:
        """Protocol and flamediff versions, device, loaded model, FLAME asset hash, queue length."""
        return service.health()

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        """Checkpoints this server can load: shipped, the models folder, hub ids already cached."""
        return {"models": service.models()}

    @app.post("/v1/jobs", status_code=201)
    async def submit(request: Request) -> JSONResponse:
        """Submit a job; an identical earlier job is returned (200) and renders only missing frames."""
        reference, animation, settings = await _read_submission(request)
        view, created = await run_in_threadpool(service.submit, reference, animation, settings)
        return JSONResponse({**view, "created": created}, status_code=201 if created else 200)

    @app.get("/v1/jobs")
    def list_jobs() -> dict[str, Any]:
        """Every job on disk, oldest first."""
        return {"jobs": service.list_jobs()}

    @app.get("/v1/jobs/{job_id}")
    async def job_status(job_id: str) -> dict[str, Any]:
        """Status, phase, progress 0..1, frames done, ETA (s), error and advice."""
        return service.status(job_id)

    @app.get("/v1/jobs/{job_id}/frames/{frame}", response_class=FileResponse)
    def frame(job_id: str, frame: int) -> FileResponse:
        """A rendered frame (PNG) by Blender frame number; 404 until it is rendered."""
        return FileResponse(service.image_path(job_id, frame), media_type="image/png")

    @app.get("/v1/jobs/{job_id}/control/{frame}", response_class=FileResponse)
    def control(job_id: str, frame: int) -> FileResponse:
        """The splatted control feature map of a frame, coloured by its principal components (PNG)."""
        return FileResponse(service.image_path(job_id, frame, control=True), media_type="image/png")

    @app.delete("/v1/jobs/{job_id}")
    def cancel(job_id: str) -> dict[str, Any]:
        """Cancel: a queued job at once, a running one within one denoising step."""
        return service.cancel(job_id)

    @app.post("/v1/release")
    def release() -> dict[str, Any]:
        """Free the loaded model and the GPU memory cache (the next job loads it again)."""
        return service.release()

    app.add_middleware(GuardMiddleware, token=token, max_body_bytes=max_body_bytes)
    return app
