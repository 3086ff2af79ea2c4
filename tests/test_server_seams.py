"""The seams between the server's parts: one declared ``Renderer`` interface for the in-process
and the child-process renderer."""

from __future__ import annotations

import inspect

from flamediff.server.render_process import ChildProcessRenderer
from flamediff.server.worker import InProcessRenderer, Renderer


def test_both_renderers_implement_the_renderer_protocol_with_its_signatures() -> None:
    methods = {name: inspect.signature(value) for name, value in vars(Renderer).items()
               if inspect.isfunction(value) and not name.startswith("_")}
    assert set(methods) == {"asset", "start", "run_job", "release"}
    assert set(Renderer.__annotations__) == {"device", "loaded_name"}
    for kind in (InProcessRenderer, ChildProcessRenderer):
        renderer = kind("cpu")
        assert isinstance(renderer, Renderer)
        for name, signature in methods.items():
            assert list(inspect.signature(getattr(kind, name)).parameters) == list(signature.parameters), name
        assert renderer.release() is False and renderer.loaded_name is None  # nothing loaded, no child started
