"""schemathesis against the bridge's own `/openapi.json`: generated requests to every
operation get no 500 and no response that breaks the document, in a bounded run.

The server is a real one on a loopback port, over a store of its own; whatever sessions the
run creates are ended after it. Every operation is fuzzed with generated path parameters
(unknown ids), then those of one session are fuzzed with that session's real id, so that
bodies and queries reach the sandbox. The event stream (it never ends) and the calls that end
the session or wait for a turn are left to the second pass's exclusions.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from bridge import BridgeServer
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from sandbox_sessions import SandboxClient

pytestmark = pytest.mark.docker

EXAMPLES = 8
"""Generated requests per operation, pass and mode (valid and invalid requests)."""
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
NEVER = {
    "GET /events",  # every session's stream: valid whatever is generated, it never ends (each
    # example then ran until schemathesis gave up reading: 3.5 minutes of the run); its bad
    # cursors are tested in test_sse.py
}
NOT_WITH_A_REAL_ID = {
    "GET /sessions/{session_id}/events",  # an SSE stream: it never ends by itself
    "DELETE /sessions/{session_id}",  # ends the session the pass fuzzes
    "POST /sessions/{session_id}/send",  # waits for a turn of a script
}


@pytest.fixture
def fuzzed(tmp_path: Path, image: str) -> Iterator[tuple[BridgeServer, str]]:
    """A bridge over a store of its own, with one session; every session the run made is
    ended after it."""
    with BridgeServer(tmp_path / "fuzz.db", heartbeat=0.5) as server:
        with SandboxClient(base_url=server.url, token=server.token) as client:
            session = client.agent("fuzzed", model="scripted", script=[{"text": "ok"}],
                                   image=image).create_session()
        try:
            yield server, session.id
        finally:
            with SandboxClient(base_url=server.url, token=server.token) as client:
                for info in client.list_sessions(include_ended=True):
                    if info.status != "ended":
                        client.session(info.id).end()


def _fuzz(operation: schemathesis.APIOperation[Any, Any, Any, Any], headers: dict[str, str],
          session_id: str | None, mode: GenerationMode) -> None:
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:  # a schemathesis Case
        if session_id is not None:
            case.path_parameters = {**(case.path_parameters or {}), "session_id": session_id}
        case.headers = {**(case.headers or {}), **headers}  # not a generated token
        case.call_and_validate(checks=CHECKS, timeout=30)

    run()


def test_no_generated_request_gets_a_500_or_breaks_the_schema(
    fuzzed: tuple[BridgeServer, str]
) -> None:
    server, session_id = fuzzed
    headers = {"Authorization": f"Bearer {server.token}"}
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json", headers=headers,
                                           timeout=30)
    assert schema.raw_schema["openapi"].startswith("3.1")
    assert schema.raw_schema["security"] == [{"bearer": []}]
    failures: dict[str, BaseException] = {}  # schemathesis raises a BaseExceptionGroup
    results = list(schema.get_all_operations())
    operations = [result.ok() for result in results if isinstance(result, Ok)]
    assert len(operations) == len(results), "some operations' schemas are invalid"
    assert len(operations) >= 20
    for operation in operations:
        if operation.label in NEVER:
            continue
        real = "{session_id}" in operation.path and operation.label not in NOT_WITH_A_REAL_ID
        for chosen, mode in itertools.product([None, session_id] if real else [None],
                                              GenerationMode):
            try:
                _fuzz(operation, headers, chosen, mode)
            except Unsatisfiable:
                pass  # no invalid request exists (a path of strings, no body, no query)
            except (Exception, BaseExceptionGroup) as exc:  # every operation's failure, told
                label = f"{operation.label} ({mode.value}, {'real' if chosen else 'any'} id)"
                failures[label] = exc
    assert not failures, "\n\n".join(f"{label}: {str(exc)[:1500]}"
                                       for label, exc in failures.items())
