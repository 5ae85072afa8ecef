"""The reports' Jinja2 templates (templates/*.j2, autoescaped, undefined names an error), read through
jinja2.PackageLoader from the installed package (package data in pyproject.toml); one environment."""
from __future__ import annotations

__all__ = ["render"]

_ENV = None


def render(template: str, **context) -> str:
    """templates/`template` rendered with `context`."""
    global _ENV
    if _ENV is None:
        import jinja2

        _ENV = jinja2.Environment(loader=jinja2.PackageLoader("imgsim_fast.reports", "templates"),
                                  autoescape=True, trim_blocks=True, lstrip_blocks=True,
                                  undefined=jinja2.StrictUndefined)
    return _ENV.get_template(template).render(**context)
