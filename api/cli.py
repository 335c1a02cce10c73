"""`payswitch api`: serve the HTTP API, manage its clients and keys, its events, and call it.

Thin callers of api.auth, api.webhooks, api.payments: no SQL here.
"""

from __future__ import annotations

import click

from ops.cli import AppContext, configure_logging, pass_app


@click.group()
def api() -> None:
    """The HTTP API: `api serve`, clients and keys, webhook events, `api call`."""


@api.command()
@pass_app
def serve(app: AppContext) -> None:
    """Serve the HTTP API (api.listen:api.port) and deliver webhooks until SIGTERM or Ctrl-C."""
    from api.serve import main
    from ops.metrics import serve_metrics

    configure_logging(app, "api")
    config = app.config
    serve_metrics("api", config.api.metrics_port, config.api.metrics_listen)
    from hsm_sim.client import HsmError

    try:
        main(config)
    except HsmError as exc:
        raise click.ClickException(f"HSM: {exc}") from None
