"""The web page of the service: one Jinja2 template (autoescaped) and a small script that calls the API."""
from __future__ import annotations

import jinja2

__all__ = ["render_page"]

_ENV = None


def render_page(**ctx) -> str:
    global _ENV
    if _ENV is None:
        # PackageLoader reads the template from the installed package (package data in pyproject.toml).
        _ENV = jinja2.Environment(loader=jinja2.PackageLoader("imgsim_fast.service", "templates"), autoescape=True)
    return _ENV.get_template("index.html.j2").render(**ctx)
