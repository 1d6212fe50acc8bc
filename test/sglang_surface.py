"""Print, as JSON, the parts of the installed SGLang that drift must keep track of.

Run as a script (in its own process: it prepares the CPU environment and
imports SGLang's HTTP server) by test/unit/test_sglang_parity.py:

- ``loop_calls``: for each method of SGLang's normal loop and batch selection,
  the methods it calls on the scheduler (``name``) or on a scheduler member
  (``member.name``), read from the method's source;
- ``routes``: every HTTP route of SGLang's server;
- ``request_fields``: the fields of ``GenerateReqInput`` (the body of /generate,
  which the OpenAI routes are translated into) and of ``SamplingParams``.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import os
import textwrap

#: SGLang's normal loop and the batch selection it runs (docs/sglang-parity.md).
LOOP_ROOTS = (
    "event_loop_normal",
    "get_next_batch_to_run",
    "get_new_batch_prefill",
    "_get_new_batch_prefill_raw",
    "update_running_batch",
)


def calls_on_self(function) -> list[str]:
    """``self.x(...)`` and ``self.member.x(...)`` calls in ``function``'s source."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(inspect.unwrap(function))))
    names = set()
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        owner = node.func.value
        if isinstance(owner, ast.Name) and owner.id == "self":
            names.add(node.func.attr)
        elif (
            isinstance(owner, ast.Attribute)
            and isinstance(owner.value, ast.Name)
            and owner.value.id == "self"
        ):
            names.add(f"{owner.attr}.{node.func.attr}")
    return sorted(names)


def route_paths(routes) -> set[str]:
    paths = set()
    for route in routes:
        if getattr(route, "path", None):
            paths.add(route.path)
        paths |= route_paths(getattr(route, "routes", None) or [])
    return paths


def main() -> None:
    from drift_sgl.cpu.environment import prepare_cpu_environment

    prepare_cpu_environment(os.environ, offline=True)
    from sglang.srt.entrypoints import http_server
    from sglang.srt.managers.io_struct import GenerateReqInput
    from sglang.srt.managers.scheduler import Scheduler
    from sglang.srt.sampling.sampling_params import SamplingParams

    surface = {
        "loop_calls": {root: calls_on_self(getattr(Scheduler, root)) for root in LOOP_ROOTS},
        "routes": sorted(route_paths(http_server.app.routes)),
        "request_fields": sorted(
            {f.name for f in dataclasses.fields(GenerateReqInput)}
            | set(SamplingParams.__struct_fields__)
        ),
    }
    print(json.dumps(surface))


if __name__ == "__main__":
    main()
