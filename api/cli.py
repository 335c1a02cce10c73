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


# Subcommands kept in their own modules (module:attribute, each a click command or group); a module not
# yet written is skipped.
SUBCOMMANDS: tuple[str, ...] = (
    "api.client_cli:client",  # api client add|list|rotate|revoke
    "api.link_cli:link",  # api link set|show: the keys of the API's H2H link to the switch
    "api.events_cli:events",  # api events list|resend
    "api.webhook_cli:webhook",  # api webhook add|list|remove
    "api.call_cli:call",  # api call ...: the API from the command line, as a back office uses it
    "api.openapi_cli:openapi",  # api openapi: print or write the OpenAPI document
)


def _register() -> None:
    import importlib
    import importlib.util

    for spec in SUBCOMMANDS:
        module_name, _, attr = spec.partition(":")
        if importlib.util.find_spec(module_name) is not None:
            api.add_command(getattr(importlib.import_module(module_name), attr))


_register()
