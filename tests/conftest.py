"""Shared fixtures live in tests/fixtures/ as plugins so every test package can use them."""

pytest_plugins = ["tests.fixtures.pg"]
