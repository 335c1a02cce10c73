"""What every request needs, opened once per process by ``api serve``: the configuration, the
database pool (``ops.pgpool``: the one trio↔asyncio meeting point), the HSM client, the issuer's keys
(``host.keys.IssuerCrypto``, for PII and PAN lookups) and the H2H link to the switch.

A route gets it with a parameter ``state: State``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Request

from host.keys import IssuerCrypto
from ops.config import Config
from ops.pgpool import PgPool

if TYPE_CHECKING:
    from api.acquirer import SwitchLink


@dataclass
class ApiState:
    config: Config
    pool: PgPool
    hsm: Any  # hsm_sim.client.HsmClient
    crypto: IssuerCrypto
    link: SwitchLink | None = None  # None until the link's keys are set (`api link set`)
    limiter: Any = None  # api.ratelimit.Limiter
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def timezone(self) -> str:
        return self.config.clearing.timezone


async def get_state(request: Request) -> ApiState:
    """``async`` on purpose: FastAPI runs a plain ``def`` dependency in a worker thread (a thread hop on
    every request)."""
    state: ApiState = request.app.state.api
    return state


# A route parameter ``state: State`` gets the process's ApiState.
State = Annotated[ApiState, Depends(get_state)]
