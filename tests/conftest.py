"""Shared fixtures live in tests/fixtures/ as plugins so every test package can use them."""

from hypothesis import HealthCheck, settings

# Real sockets and a real database make timings noisy: no per-example deadline. Keep example counts
# modest so `make test` stays under ten minutes on two cores; a test that needs more says so itself.
settings.register_profile(
    "payswitch", deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("payswitch")

pytest_plugins = ["tests.fixtures.pg", "tests.fixtures.hsm"]
