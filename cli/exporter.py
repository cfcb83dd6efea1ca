"""``aml exporter``: serve aml's own metrics (read from the catalog) to Prometheus."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.render import console


def exporter(
    port: Annotated[int, typer.Option(help="TCP port to listen on.")] = 9808,
    addr: Annotated[str, typer.Option(help="Address to bind (0.0.0.0 for every interface).")] = "127.0.0.1",
) -> None:
    """Serve Prometheus metrics (aml_*: store sizes, backups, alerts, task runs) read from the catalog
    at each scrape, on http://ADDR:PORT/metrics; runs until interrupted."""
    from sqlalchemy.engine import make_url

    from workers.app import get_settings
    from workers.metrics import serve

    url = get_settings().catalog_url
    shown = make_url(url).render_as_string(hide_password=True)
    console.print(f"serving aml metrics on http://{addr}:{port}/metrics (catalog {shown})", highlight=False,
                  markup=False, soft_wrap=True)
    serve(url, port, addr)
