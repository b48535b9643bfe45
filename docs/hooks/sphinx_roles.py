"""mkdocs hook: the Sphinx roles of docstrings read as code on the site.

kitmw's docstrings use Sphinx roles (``:class:`~kitmw.errors.ConfigError```), which
Python tools and editors understand; mkdocstrings renders them as they are written
(``:class:`` followed by the code). This hook turns each into the code alone, the last
component only where the role asks for it with ``~``.
"""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|data|mod|exc|obj|const):<code>(~?)([^<]*)</code>")


def _code(match: re.Match[str]) -> str:
    short, target = match.groups()
    return "<code>" + (target.rpartition(".")[2] if short else target) + "</code>"


def on_page_content(html: str, **kwargs: Any) -> str:
    return _ROLE.sub(_code, html)
