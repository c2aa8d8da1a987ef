"""MkDocs hook: the library reference, generated from the docstrings of sockferry.api.

A page that holds the marker line ``<!-- api-reference -->`` gets it replaced with the
signature and docstring of every name in the ``__all__`` of ``sockferry.api``,
``sockferry.tftp.library`` and ``sockferry.sctp.library`` (and of the public methods of
their classes), in that order; the exception tree follows, from ``sockferry.errors``.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mkdocs.config.defaults import MkDocsConfig
    from mkdocs.structure.files import Files
    from mkdocs.structure.pages import Page

MARKER = "<!-- api-reference -->"
SRC = Path(__file__).resolve().parents[2] / "src"


def _doc(obj: object) -> str:
    return inspect.cleandoc(obj.__doc__ or "").strip()


def _signature(name: str, obj: object) -> str:
    """``name(param: type = default, *, ...) -> type`` as the source writes it (the
    annotations are strings: ``from __future__ import annotations``), without self."""
    try:
        signature = inspect.signature(obj)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return name
    params, starred = [], False
    for param in signature.parameters.values():
        if param.name == "self":
            continue
        if param.kind is param.KEYWORD_ONLY and not starred:
            params.append("*")
            starred = True
        text = param.name
        if param.annotation is not param.empty:
            text += f": {param.annotation}"
        if param.default is not param.empty:
            default = param.default
            shown = oct(default) if param.name in ("mode", "umask") and isinstance(
                default, int) else repr(default)
            text += f" = {shown}"
        params.append(text)
    returns = "" if signature.return_annotation is signature.empty \
        else f" -> {signature.return_annotation}"
    return f"{name}({', '.join(params)}){returns}"


def _class(name: str, cls: type) -> list[str]:
    parts = [f"### class `{name}`\n", _doc(cls) + "\n"]
    for attr, member in vars(cls).items():
        if attr.startswith("_") and attr not in ("__aenter__", "__aexit__"):
            continue
        if attr in ("__aenter__", "__aexit__"):
            continue  # said by the class's docstring (async with)
        if isinstance(member, property):
            parts += [f"#### `{name}.{attr}`\n", _doc(member) + "\n"]
        elif inspect.isfunction(member):
            prefix = "async " if inspect.iscoroutinefunction(member) else ""
            parts += [f"#### `{prefix}{name}.{_signature(attr, member)}`\n",
                      _doc(member) + "\n"]
    return parts


def _module(title: str, module: ModuleType) -> list[str]:
    parts = [f"## `{title}`\n", _doc(module) + "\n"]
    for name in module.__all__:
        obj = getattr(module, name)
        if inspect.isclass(obj):
            parts += _class(name, obj)
        elif callable(obj) and getattr(obj, "__module__", None) == module.__name__:
            prefix = "async " if inspect.iscoroutinefunction(obj) else ""
            parts += [f"### `{prefix}{_signature(name, obj)}`\n", _doc(obj) + "\n"]
        else:
            shown = repr(obj).replace("typing.", "").replace("NoneType", "None")
            parts += [f"### `{name} = {shown}`\n"]
    return parts


def render() -> str:
    if str(SRC) not in sys.path:  # a checkout without an installed sockferry
        sys.path.insert(0, str(SRC))
    from sockferry import api, errors  # noqa: PLC0415
    from sockferry.sctp import library as sctp  # noqa: PLC0415
    from sockferry.tftp import library as tftp  # noqa: PLC0415

    parts = _module("sockferry", api) + _module("sockferry.tftp", tftp) \
        + _module("sockferry.sctp", sctp)
    parts.append("## Errors\n")
    for name, cls in vars(errors).items():
        if inspect.isclass(cls) and issubclass(cls, errors.SockferryError):
            base = cls.__bases__[0].__name__
            parts += [f"### `{name}({base})`\n", _doc(cls) + "\n"]
    return "\n".join(parts)


def on_page_markdown(markdown: str, /, *, page: Page, config: MkDocsConfig,
                     files: Files) -> str | None:
    if MARKER not in markdown:
        return None
    return markdown.replace(MARKER, render())
