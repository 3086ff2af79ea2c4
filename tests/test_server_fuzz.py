"""A property-based fuzzer against the in-process app: schemathesis generates requests from the
server's own OpenAPI document (valid and invalid ones), and every answer must be documented,
well-formed and never a 5xx. Fixed seed (derandomized) and a bounded example count keep it
reproducible and well under two minutes; the worker is not started, so no job renders."""

from __future__ import annotations

import pytest

from test_server_helpers import TOKEN

schemathesis = pytest.importorskip("schemathesis")
pytest.importorskip("fastapi")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,  # noqa: E402
                                               status_code_conformance)

from flamediff.server.app import create_app  # noqa: E402
from flamediff.server.service import build_service  # noqa: E402

AUTH = {"Authorization": f"Bearer {TOKEN}"}
#: Examples per operation and mode (valid, invalid requests): 9 operations x 2 x 15.
EXAMPLES = 15


@pytest.fixture(scope="module")
def fuzz_schema(tmp_path_factory, head_folder):
    service = build_service(str(tmp_path_factory.mktemp("fuzz-jobs")), str(tmp_path_factory.mktemp("fuzz-models")), "cpu",
                            shipped_dir=str(tmp_path_factory.mktemp("fuzz-no-shipped")),
                            allow_paths=[str(tmp_path_factory.mktemp("fuzz-allowed"))])
    app = create_app(service, TOKEN, max_body_bytes=1024 * 1024, start_worker=False)
    return schemathesis.openapi.from_asgi("/openapi.json", app, headers=AUTH)


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture
def subnormal_floats():
    """Hypothesis refuses to generate floats while the CPU flushes subnormals to zero, which the
    CPU pipeline and trainer switch on for speed (process-wide) in earlier tests."""
    import torch

    torch.set_flush_denormal(False)
    yield
    torch.set_flush_denormal(True)


def test_no_server_error_and_every_answer_is_documented(fuzz_schema, subnormal_floats):
    """Each operation with valid (positive) and invalid (negative) requests; an operation whose
    every input is valid (no body, a free-form job id) has no negative cases to send. The
    tracking routes are among them, ``POST /v1/tracks`` with multipart bodies."""
    labels = {result.ok().label for result in fuzz_schema.get_all_operations()}
    assert {"POST /v1/tracks", "GET /v1/tracks/{task_id}", "DELETE /v1/tracks/{task_id}",
            "GET /v1/tracks/{task_id}/animation"} <= labels, labels
    tracks = fuzz_schema.app.openapi()["paths"]["/v1/tracks"]["post"]["requestBody"]["content"]
    assert list(tracks) == ["multipart/form-data"]
    for result in fuzz_schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def call(case):
                case.call_and_validate(headers=AUTH, checks=CHECKS)

            try:
                call()
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE, operation.label
