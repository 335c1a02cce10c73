"""``payswitch api serve``: the API process (hypercorn on trio), its background tasks and /metrics.

One trio loop runs everything: hypercorn's HTTP server, the H2H link to the switch (api.acquirer), and
the background tasks listed in ``BACKGROUND`` (each ``async def run(state)``, running until cancelled:
the payment sweeper, the webhook dispatcher, the idempotency purge). SIGTERM or SIGINT stops accepting,
lets requests in flight finish (hypercorn's graceful timeout), then stops the tasks.
"""

from __future__ import annotations

import importlib
import importlib.util
import signal
import sys
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from api.app import create_app
from api.ratelimit import Limiter
from api.state import ApiState
from ops.config import Config
from ops.db import database_url
from ops.logs import get_logger
from ops.pgpool import PgPool

log = get_logger(__name__)

APP_ROLE = "payswitch_app"
# module:function of every background task, started in this order (a module not yet written is skipped).
BACKGROUND: tuple[str, ...] = (
    "api.acquirer:run",
    "api.payments:sweeper",
    "api.envelope:purger",
    "api.webhooks:dispatcher",
    "host.risk:task",
)


def hypercorn_config(config: Config) -> HypercornConfig:
    hc = HypercornConfig()
    hc.bind = [f"{config.api.listen}:{config.api.port}"]
    hc.accesslog = None  # the envelope logs each request (without its query: it may hold a reference)
    hc.errorlog = None
    hc.graceful_timeout = float(config.switch.shutdown_grace_s)
    hc.keep_alive_timeout = 75.0
    hc.h11_max_incomplete_size = 16 * 1024  # request line and headers
    return hc


def _task(spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    if importlib.util.find_spec(module_name) is None:
        return None
    return getattr(importlib.import_module(module_name), attr, None)


async def run_api(config: Config, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Open the pool, the HSM client and the issuer keys, then serve until cancelled."""
    from host.cli import open_crypto
    from hsm_sim.client import HsmClient

    url = database_url(config)
    with PgPool(url, min_size=1, max_size=config.api.db_pool_max, role=APP_ROLE) as pool:
        async with HsmClient.from_config(config.hsm) as hsm:
            crypto = await open_crypto(pool, hsm)
            state = ApiState(config=config, pool=pool, hsm=hsm, crypto=crypto)
            state.limiter = Limiter()
            app = create_app(state)
            shutdown = trio.Event()
            async with trio.open_nursery() as nursery:
                for spec in BACKGROUND:
                    fn = _task(spec)
                    if fn is not None:
                        nursery.start_soon(fn, state)
                stopped = trio.Event()

                async def http() -> None:
                    try:
                        await hypercorn_serve(app, hypercorn_config(config),  # type: ignore[arg-type]
                                              shutdown_trigger=shutdown.wait)
                    finally:
                        stopped.set()

                nursery.start_soon(http)
                task_status.started()
                log.info("api_listening", address=config.api.listen, port=config.api.port)
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for _ in signals:
                        break
                shutdown.set()
                await stopped.wait()
                nursery.cancel_scope.cancel()


def main(config: Config) -> None:
    sys.setswitchinterval(0.0005)  # as host serve: database replies need the GIL back promptly
    trio.run(run_api, config)
