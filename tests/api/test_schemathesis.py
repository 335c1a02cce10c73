"""Schemathesis against the live API: generated requests for every operation of the served document
(``/v1/openapi.json``) find no 5xx (``not_a_server_error``) and no response that breaks its schema
(``response_schema_conformance``).

Bounded: at most ``EXAMPLES`` cases per operation and a time budget (``BUDGET_S``) for the whole run;
once it is spent the remaining cases are not sent. The run has a system of its own: generated ids
(``card_1``...) would otherwise freeze, unload or close the demo cards the other tests of the worker
share.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import response_schema_conformance

from api.auth import SCOPES
from pos.system import WITH_API, System
from tests.api.conftest import new_client

EXAMPLES = 25
BUDGET_S = 180.0


@pytest.fixture(scope="module")
def fuzzed() -> Iterator[System]:
    # The demo without its load pool (terminals and cards for benchmarks): a quicker start.
    system = System().start(WITH_API, seed=("--load-terminals", "0", "--load-cards", "1"))
    try:
        yield system
    finally:
        system.stop()


@pytest.fixture(scope="module")
def fuzz_key(fuzzed: System) -> Iterator[str]:
    client = new_client(fuzzed, list(SCOPES), rate_per_second=100_000)
    yield client.headers["Authorization"]
    client.close()


def _send(case: Any, system: System, key: str) -> None:
    headers = dict(case.headers or {})
    headers["Authorization"] = key
    if case.method.upper() == "POST":
        headers["Idempotency-Key"] = str(uuid.uuid4())  # a fresh key: every case runs, none is a replay
    case.headers = headers
    case.call_and_validate(base_url=system.api_url, timeout=30,
                           checks=[not_a_server_error, response_schema_conformance])


def test_api_conforms(fuzzed: System, fuzz_key: str) -> None:
    # schemathesis's own pytest plugin (schema.parametrize) does not run under pytest 9, so each
    # operation is a hypothesis test of its own here, with the same strategies.
    schema = schemathesis.openapi.from_url(f"{fuzzed.api_url}/v1/openapi.json")
    deadline = time.monotonic() + BUDGET_S
    failures: list[str] = []
    sent: dict[str, int] = {}
    def _hypothesis_test(operation: Any, label: str) -> Any:
        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  phases=[Phase.explicit, Phase.generate, Phase.shrink],
                  suppress_health_check=list(HealthCheck))
        def run(case: Any) -> None:
            if time.monotonic() > deadline:
                return  # the budget is spent: the rest of the cases are not sent
            sent[label] += 1
            _send(case, fuzzed, fuzz_key)

        return run

    for result in schema.get_all_operations():
        if not isinstance(result, Ok):
            failures.append(f"the document: {result.err()}")
            continue
        operation = result.ok()
        label = f"{operation.method.upper()} {operation.path}"
        sent[label] = 0

        try:
            _hypothesis_test(operation, label)()
        except (Exception, BaseExceptionGroup) as exc:  # every operation is tried; all are reported
            failures.append(f"{label}:\n{exc}")
    summary = ", ".join(f"{label} {n}" for label, n in sent.items())
    print(f"schemathesis: {sum(sent.values())} cases over {len(sent)} operations ({summary})")
    assert sent, "the served document lists no operation"
    assert not failures, "\n\n".join(failures)
