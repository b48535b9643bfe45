"""mkdocs hook: the docs' tables of concerns are rendered from the registry itself.

A page that holds ``<!-- registry: order -->`` gets, in its place, the canonical order
of :data:`kitmw.concerns.CONCERNS` with the sides each concern serves and why it sits
where it does: adding a concern to the registry updates the docs, and nothing else
lists them.
"""

from __future__ import annotations

from typing import Any

MARKER = "<!-- registry: order -->"


def order_table() -> str:
    """The canonical order as a markdown table (outermost first)."""
    from kitmw.concerns import CONCERNS

    rows = [
        "| | concern (option) | ASGI / WSGI | httpx client | `kitmw.endpoint` | why there |",
        "| --: | --- | --- | --- | --- | --- |",
    ]
    for n, entry in enumerate(CONCERNS, 1):
        server = "—"
        if "server" in entry.policies:
            server = f"`kitmw.{entry.middleware}`" if entry.middleware else "yes"
        client = "yes" if "client" in entry.policies else "—"
        if "client" in entry.on_by_default:
            client = "yes, on by default"
        endpoint = "yes" if "endpoint" in entry.policies else "—"
        rows.append(f"| {n} | `{entry.name}` | {server} | {client} | {endpoint} | {entry.why} |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, order_table())
    return markdown
