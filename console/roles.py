"""Roles and the actions each may take: one table, enforced on the server for every action.

Roles are ordered: viewer < operator < supervisor < admin; an action names the least role that may take
it. Every console action registers itself here when its view module is imported (``console.auth.action``),
so the security test can try every action with every role (tests/console/test_roles.py).
"""

from __future__ import annotations

ROLES: tuple[str, ...] = ("viewer", "operator", "supervisor", "admin")

# action name (dotted, as written to the audit record) -> the least role that may take it
ACTIONS: dict[str, str] = {}


def rank(role: str) -> int:
    return ROLES.index(role)


def may(role: str, action: str) -> bool:
    """Whether ``role`` may take ``action`` (an unknown action: nobody may)."""
    least = ACTIONS.get(action)
    return least is not None and role in ROLES and rank(role) >= rank(least)


def register(action: str, least: str) -> None:
    if least not in ROLES:
        raise ValueError(f"unknown role {least!r}")
    known = ACTIONS.get(action)
    if known is not None and known != least:
        raise ValueError(f"action {action} registered twice with different roles ({known}, {least})")
    ACTIONS[action] = least
