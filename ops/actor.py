"""Who did it: the actor recorded with an operator's action (KYC decisions, card events, the audit).

The CLI acts as ``cli:<unix user>`` (issue 18 gives the console and the API their own actors: an
operator's name, an API client's). One function, so every record names the CLI's actor the same way.
"""

from __future__ import annotations

import getpass
import os


def cli_actor() -> str:
    """``cli:<unix user>`` for the user running this process (``cli:uid<N>`` if it has no name)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid{os.getuid()}"
    return f"cli:{user}"
