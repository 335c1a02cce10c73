"""Shared fixtures live in tests/fixtures/ as plugins so every test package can use them."""

import structlog
from hypothesis import HealthCheck, settings

# In-process services log through structlog's default chain. Its console renderer formats a traceback
# with rich (installed with schemathesis) and every frame's locals: a second or more per exception on
# this box, with the trio loop blocked meanwhile (a host test injecting bugs timed out its own requests),
# and locals such as PIN blocks printed. Tests render tracebacks plain, as `ops.logs.configure` does.
structlog.configure(
    processors=[
        *structlog.get_config()["processors"][:-1],
        structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback),
    ]
)

# Real sockets and a real database make timings noisy: no per-example deadline. Keep example counts
# modest so `make test` stays under ten minutes on two cores; a test that needs more says so itself.
settings.register_profile(
    "payswitch", deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("payswitch")

pytest_plugins = ["tests.fixtures.pg", "tests.fixtures.hsm", "tests.fixtures.live", "tests.fixtures.console"]
