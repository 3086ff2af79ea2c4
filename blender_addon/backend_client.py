"""A small HTTP client for ``flamediff serve`` (protocol v1, backend/server/PROTOCOL.md).

stdlib only (urllib), so it runs in Blender's Python. Every call has a short timeout and every
failure is one :class:`BackendError` whose ``advice`` says in plain words what to do.
"""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
import uuid

from ..backend.formats.ports import busy_port_message
from ..backend.formats.protocol import DEFAULT_URL, PROTOCOL_VERSION, is_loopback_url
START_HINT = ("start it with 'flamediff serve' (or 'python -m flamediff serve' in the backend's venv), "
              "or choose 'Start locally' in the flamediff add-on preferences")
LOCAL_START_HINT = ("Render starts it, or press 'Start backend' in the flamediff add-on preferences "
                    "('Start locally' is selected)")


#: ``BackendError.status`` when another program answers at the backend's address.
FOREIGN = -1


class BackendError(RuntimeError):
    """A failed backend call: ``message`` names the problem, ``advice`` what to do about it."""

    def __init__(self, message: str, advice: str = "", status: int | None = None) -> None:
        super().__init__(message)
        self.message, self.advice, self.status = message, advice, status

    def __str__(self) -> str:
        return with_advice(self.message, self.advice)


def with_advice(message: str, advice: str) -> str:
    """``message``, then ``advice`` as its own sentence: how the add-on reports a problem and its fix."""
    return f"{message}. {advice[:1].upper()}{advice[1:]}" if advice else message


def read_token(token_file: str, start_hint: str = START_HINT) -> str:
    """The token the backend wrote at start; a missing file means it has not started (yet)."""
    path = os.path.expanduser(token_file or "")
    try:
        with open(path, encoding="utf-8") as handle:
            token = handle.read().strip()
    except OSError as exc:
        advice = ("the backend writes it when it starts: " + start_hint if start_hint == LOCAL_START_HINT else
                  "start the backend (it writes the token file) and set the same token file in the flamediff "
                  "preferences")
        raise BackendError(f"cannot read the backend token file '{path}' ({exc.strerror or exc})", advice) from None
    if not token:
        raise BackendError(f"the token file '{path}' is empty", "restart the backend; it writes a fresh token")
    return token


def _multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = f"flamediff-{uuid.uuid4().hex}"
    parts: list[bytes] = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
                     + value.encode() + b"\r\n")
    for name, (filename, data) in files.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                     f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class BackendClient:
    """``BackendClient(url, token_file)``; ``online_access`` is Blender's "Allow Online Access";
    ``start_hint`` says how to start a backend that is not running (it depends on the backend mode)."""

    def __init__(self, url: str, token_file: str, timeout: float = 3.0, online_access: bool = True,
                 start_hint: str = START_HINT) -> None:
        self.url = url.rstrip("/") or DEFAULT_URL
        if "://" not in self.url:
            self.url = "http://" + self.url
        self.token_file, self.timeout, self.online_access = token_file, timeout, online_access
        self.start_hint = start_hint

    # ------------------------------------------------------------------ transport
    def _request(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None,
                 timeout: float | None = None, raw: bool = False):
        if not self.online_access and not is_loopback_url(self.url):
            raise BackendError(f"online access is disabled in Blender and {self.url} is not on this machine",
                               "enable Edit > Preferences > System > Network > Allow Online Access, or use a "
                               "backend on 127.0.0.1")
        headers = {"Authorization": f"Bearer {read_token(self.token_file, self.start_hint)}"}
        if content_type:
            headers["Content-Type"] = content_type
        request = urllib.request.Request(self.url + path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.timeout) as response:
                data = response.read()
        except urllib.error.HTTPError as exc:
            raise self._http_error(exc) from None
        except urllib.error.URLError as exc:
            raise self._connection_error(exc.reason) from None
        except TimeoutError as exc:
            raise self._connection_error(exc) from None
        except (ConnectionError, OSError) as exc:
            raise self._connection_error(exc) from None
        if raw:
            return data
        try:
            return json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise self.foreign_program(f"{path} with something that is not JSON") from None

    def _connection_error(self, reason) -> BackendError:
        if isinstance(reason, ConnectionRefusedError) or "refused" in str(reason).lower():
            return BackendError(f"the flamediff backend is not running at {self.url} (connection refused)",
                                self.start_hint)
        if isinstance(reason, (socket.timeout, TimeoutError)) or "timed out" in str(reason).lower():
            return BackendError(f"the flamediff backend at {self.url} did not answer within {self.timeout:g} s",
                                "it may be busy starting or overloaded; try again, or restart it")
        return BackendError(f"cannot reach the flamediff backend at {self.url} ({reason})",
                            f"check the backend URL in the flamediff preferences; {self.start_hint}")

    def _http_error(self, exc: urllib.error.HTTPError) -> BackendError:
        try:
            body = json.loads(exc.read().decode("utf-8"))
        except (ValueError, UnicodeDecodeError, OSError):
            body = {}
        if not isinstance(body, dict):
            body = {}
        if exc.code == 401:
            return BackendError("the backend refused the access token (401)",
                                "the token file in the flamediff preferences must be the one this backend wrote "
                                "at its start (it prints the path); a restarted backend writes a new token",
                                401)
        if "error" not in body:   # every flamediff answer names its error: this is another program
            return self.foreign_program(f"HTTP {exc.code} {exc.reason}")
        return BackendError(f"the backend refused the request: {body['error']}", body.get("advice") or "", exc.code)

    def foreign_program(self, answer: str) -> BackendError:
        """The error for a URL where another program answers (``answer``: what it said)."""
        parts = urllib.parse.urlsplit(self.url)
        busy = (busy_port_message(parts.port) if parts.port and is_loopback_url(self.url) else
                f"{self.url} is another program")
        error = BackendError(f"{parts.netloc} is not a flamediff backend (it answered {answer}): {busy}",
                             "stop that program, or choose another port in the flamediff preferences ('Start "
                             "locally' moves to a free port by itself when 'Pick a free port' is on)", FOREIGN)
        return error

    # ------------------------------------------------------------------ routes
    def health(self, check_version: bool = True) -> dict:
        health = self._request("GET", "/v1/health")
        if check_version and health.get("protocol_version") != PROTOCOL_VERSION:
            raise BackendError(
                f"protocol version mismatch: the backend speaks v{health.get('protocol_version')}, this add-on "
                f"v{PROTOCOL_VERSION} (backend flamediff {health.get('flamediff_version')})",
                "install the add-on zip built from the same flamediff version as the backend")
        return health

    def models(self) -> list[dict]:
        return list(self._request("GET", "/v1/models").get("models", []))

    def submit(self, reference: str, animation: str, settings: dict | None = None, upload: bool = True) -> dict:
        """Submit a job from two local files: uploaded (multipart) or, with ``upload=False``, by path."""
        settings = dict(settings or {})
        if not upload:
            body = json.dumps({"reference_path": os.path.abspath(reference),
                               "animation_path": os.path.abspath(animation), "settings": settings}).encode()
            return self._request("POST", "/v1/jobs", body, "application/json", timeout=max(self.timeout, 30))
        files = {}
        for name, path in (("reference", reference), ("animation", animation)):
            try:
                with open(path, "rb") as handle:
                    files[name] = (os.path.basename(path), handle.read())
            except OSError as exc:
                raise BackendError(f"cannot read the {name} file '{path}' ({exc.strerror or exc})",
                                   f"choose an existing {name} file") from None
        body, content_type = _multipart({"settings": json.dumps(settings)}, files)
        return self._request("POST", "/v1/jobs", body, content_type, timeout=max(self.timeout, 30))

    def job(self, job_id: str) -> dict:
        return self._request("GET", f"/v1/jobs/{urllib.parse.quote(job_id)}")

    def fetch_frame(self, job_id: str, frame: int, path: str) -> str:
        """Write Blender frame ``frame``'s PNG to ``path`` (temp name, then rename); 404 until rendered."""
        data = self._request("GET", f"/v1/jobs/{urllib.parse.quote(job_id)}/frames/{int(frame)}", raw=True)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{path}.part"
        with open(tmp, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
        return path

    def cancel(self, job_id: str) -> dict:
        return self._request("DELETE", f"/v1/jobs/{urllib.parse.quote(job_id)}")

    def submit_track(self, media: str, first_frame: int) -> dict:
        """Upload a photo or video to ``POST /v1/tracks``; ``first_frame`` numbers its first frame."""
        try:
            with open(media, "rb") as handle:
                data = handle.read()
        except OSError as exc:
            raise BackendError(f"cannot read '{media}' ({exc.strerror or exc})",
                               "choose an existing photo or video file") from None
        body, content_type = _multipart({"first_frame": str(int(first_frame))}, {"media": (os.path.basename(media), data)})
        return self._request("POST", "/v1/tracks", body, content_type, timeout=max(self.timeout, 60))

    def track(self, task_id: str) -> dict:
        return self._request("GET", f"/v1/tracks/{urllib.parse.quote(task_id)}")

    def fetch_track_animation(self, task_id: str, path: str) -> str:
        """Write a finished tracking task's animation file to ``path``."""
        data = self._request("GET", f"/v1/tracks/{urllib.parse.quote(task_id)}/animation", raw=True,
                             timeout=max(self.timeout, 30))
        with open(path, "wb") as handle:
            handle.write(data)
        return path

    def cancel_track(self, task_id: str) -> dict:
        return self._request("DELETE", f"/v1/tracks/{urllib.parse.quote(task_id)}")

    def release(self) -> dict:
        return self._request("POST", "/v1/release", b"", "application/json")
