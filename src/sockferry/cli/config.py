"""Settings from config files and ``SOCKFERRY_*`` variables, and ``sockferry config show``.

Everything here is derived from the argparse parsers: a key is an option's long name
without the dashes, its variable ``SOCKFERRY_`` and the name in capitals with ``_`` for
``-``, and a value goes through the option's own ``type`` and ``choices`` — so a flag
added to a parser is configurable with no code here.  Precedence: command line, then
environment, then file (``[COMMAND]``, then ``[client]`` for send/get/ls), then the
parser's default.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from sockferry.cli.console import Console
from sockferry.cli.runtime import ExitCode
from sockferry.errors import UsageError
from sockferry.records import record

SUMMARY = "show every setting a command would use and where it comes from"
SYSTEM_FILE = Path("/etc/sockferry/config.toml")
ENV_PREFIX = "SOCKFERRY_"
# $SOCKFERRY_TOKEN is the token itself (read by the clients), not an option: no option
# may be called --token, and a client's token-file from a file yields to it.
TOKEN_VARIABLE = "SOCKFERRY_TOKEN"  # noqa: S105 - a variable's name, not a secret
CLIENT_SECTION = "client"
CLIENT_COMMANDS = ("send", "get", "ls")
# Global options (and --help) stay on the command line.
COMMAND_LINE_ONLY = frozenset({"help", "version", "debug", "quiet", "verbose", "config"})
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})
COMMAND_LINE = "command line"
DEFAULT = "default"


class _Unset:
    """Stands in for a default while parsing, so that what the command line set shows."""

    def __repr__(self) -> str:
        return "<unset>"


UNSET: Any = _Unset()


@record
class Setting:
    """A value as written (TOML value or variable text) and where: the variable's name or
    ``FILE line N``."""

    raw: object
    source: str


Files = dict[str, dict[str, Setting]]  # section -> key -> setting


def user_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"),
                                                             ".config")
    return Path(base) / "sockferry" / "config.toml"


def env_name(key: str) -> str:
    return ENV_PREFIX + key.upper().replace("-", "_")


def options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The configurable options of a command's parser, by key."""
    found: dict[str, argparse.Action] = {}
    for action in parser._actions:
        longs = [o for o in action.option_strings if o.startswith("--")]
        if longs and action.dest not in COMMAND_LINE_ONLY and action.dest != argparse.SUPPRESS:
            found[longs[0][2:]] = action
    return found


def hide_defaults(parser: argparse.ArgumentParser) -> dict[str, object]:
    """Replace each configurable option's default by UNSET (None for a repeatable one,
    which argparse appends to); returns the real defaults by key."""
    saved: dict[str, object] = {}
    for key, action in options(parser).items():
        saved[key] = action.default
        action.default = None if _is_list(action) else UNSET
    return saved


# ---- reading files -----------------------------------------------------------------------


def read_files(explicit: str | None) -> Files:
    """``--config FILE`` alone, else the system file then the user's (merged key by key,
    the user's winning); a missing default file is no error."""
    if explicit is not None:
        return _read(Path(explicit), required=True)
    merged: Files = {}
    for path in (SYSTEM_FILE, user_file()):
        for section, settings in _read(path, required=False).items():
            merged.setdefault(section, {}).update(settings)
    return merged


def _read(path: Path, required: bool) -> Files:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if required:
            raise UsageError(f"config file {path} does not exist: check --config") from None
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read config file {path}: {exc}; fix it or point "
                         "--config at another file") from None
    import tomllib  # noqa: PLC0415 - only when a file exists

    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {path} is not valid TOML: {exc}") from None
    lines = text.splitlines()
    files: Files = {}
    for section, table in document.items():
        if not isinstance(table, dict):
            raise UsageError(f"config file {path}{_line(lines, None, section)}: '{section}' "
                             "is outside a section: put it under [COMMAND]")
        files[section] = {}
        for key, raw in table.items():
            files[section][key] = Setting(raw, f"{path}{_line(lines, section, key)}")
    return files


_HEADER = re.compile(r"""^\s*\[\s*["']?([^\]"']+?)["']?\s*\]""")


def _line(lines: list[str], section: str | None, key: str) -> str:
    """`` line N`` of ``key`` in ``[section]`` (tomllib gives no positions); '' if the
    key is written in a way this scan does not follow."""
    current: str | None = None
    pattern = re.compile(rf"""^\s*["']?{re.escape(key)}["']?\s*=""")
    for number, line in enumerate(lines, 1):
        header = _HEADER.match(line)
        if header:
            current = header.group(1).strip()
        elif current == section and pattern.match(line):
            return f" line {number}"
    return ""


def check(files: Files, parser_of: Callable[[str], argparse.ArgumentParser],
          commands: Mapping[str, object]) -> None:
    """Every section names a command (or is [client]) and every key one of its options."""
    for section, settings in files.items():
        if section == CLIENT_SECTION:
            known = set.intersection(*(set(options(parser_of(c))) for c in CLIENT_COMMANDS))
        elif section in commands and section != "config":
            known = set(options(parser_of(section)))
        else:
            where = next(iter(settings.values())).source if settings else "a config file"
            raise UsageError(f"unknown section [{section}] in {where.split(' line ')[0]}: "
                             f"sections are [client] and command names")
        for key, setting in settings.items():
            if key not in known:
                raise UsageError(f"unknown key '{key}' in [{section}] of {setting.source}: "
                                 f"not an option of {_section_commands(section)} (see "
                                 f"'sockferry {_help_command(section)} --help')")


def _section_commands(section: str) -> str:
    return "send, get and ls alike" if section == CLIENT_SECTION else f"sockferry {section}"


def _help_command(section: str) -> str:
    return "send" if section == CLIENT_SECTION else section


# ---- resolving -------------------------------------------------------------------------


def resolve(command: str, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
            defaults: Mapping[str, object], files: Files,
            environ: Mapping[str, str]) -> dict[str, str]:
    """Fill every option the command line left unset from the environment, the files or
    the default; returns each key's source."""
    sections = [files.get(command, {})]
    if command in CLIENT_COMMANDS:
        sections.append(files.get(CLIENT_SECTION, {}))
    sources: dict[str, str] = {}
    for members in _by_dest(parser).values():
        first_key, first = members[0]
        if _given(first, getattr(namespace, first.dest, UNSET)):
            sources.update(dict.fromkeys((key for key, _ in members), COMMAND_LINE))
            continue
        found = _layered(members, command, sections, environ)
        default = _default(parser, first, defaults[first_key])
        setattr(namespace, first.dest, default)
        sources.update(dict.fromkeys((key for key, _ in members), DEFAULT))
        _exclusive_flags(found)
        for key, action, setting in found:
            _apply(parser, namespace, action, key, convert(action, key, setting), default)
            sources[key] = setting.source
    return sources


def _by_dest(parser: argparse.ArgumentParser) -> dict[str, list[tuple[str, argparse.Action]]]:
    """The configurable options grouped by the attribute they set (-4/-6 both set the
    family; --include/--exclude both add filter rules), in the parser's order."""
    groups: dict[str, list[tuple[str, argparse.Action]]] = {}
    for key, action in options(parser).items():
        groups.setdefault(action.dest, []).append((key, action))
    return groups


def _exclusive_flags(found: list[tuple[str, argparse.Action, Setting]]) -> None:
    on = [(key, setting) for key, action, setting in found
          if _is_flag(action) and _truth(setting.raw, setting.source.startswith(ENV_PREFIX))]
    if len(on) > 1:
        (key1, setting1), (key2, setting2) = on[:2]
        raise UsageError(f"'{key1}' ({setting1.source}) and '{key2}' ({setting2.source}) "
                         "exclude each other: set one of them")


def _apply(parser: argparse.ArgumentParser, namespace: argparse.Namespace,
           action: argparse.Action, key: str, value: object, default: object) -> None:
    """Sets ``value`` as the command line would: a flag that is off leaves the default,
    and an action of sockferry's own is called once per item, as argparse calls it."""
    if _is_flag(action):
        setattr(namespace, action.dest, action.const if value else default)
    elif type(action).__module__ == "argparse":
        setattr(namespace, action.dest, value)
    else:
        items = value if isinstance(value, list) else [value]
        for item in items:
            action(parser, namespace, str(item), f"--{key}")


def _layered(members: list[tuple[str, argparse.Action]], command: str,
             sections: list[dict[str, Setting]],
             environ: Mapping[str, str]) -> list[tuple[str, argparse.Action, Setting]]:
    """The settings of the first layer (environment, [COMMAND], [client]) that sets any
    option of ``members``: -6 in [send] beats -4 in [client]."""
    found = [(key, action, Setting(environ[env_name(key)], env_name(key)))
             for key, action in members if env_name(key) in environ]
    for settings in sections:
        if found:
            break
        found = [(key, action, settings[key]) for key, action in members
                 if key in settings and not _token_file_yields(key, command, environ)]
    return found


def _token_file_yields(key: str, command: str, environ: Mapping[str, str]) -> bool:
    # An environment setting of the token beats a file's token-file.
    return key == "token-file" and command in CLIENT_COMMANDS and bool(
        environ.get(TOKEN_VARIABLE))


def _given(action: argparse.Action, value: object) -> bool:
    return value is not None if _is_list(action) else value is not UNSET


def _is_list(action: argparse.Action) -> bool:
    """Repeatable: argparse's append actions, and actions that say so (``repeatable``)."""
    return (isinstance(action, argparse._AppendAction) or action.nargs in ("+", "*")
            or getattr(action, "repeatable", False))


def _is_flag(action: argparse.Action) -> bool:
    return action.nargs == 0


def _default(parser: argparse.ArgumentParser, action: argparse.Action,
             default: object) -> object:
    # argparse converts a string default with the option's type; so do we.
    if isinstance(default, str) and action.type is not None:
        return convert(action, action.dest, Setting(default, DEFAULT))
    return default


def convert(action: argparse.Action, key: str, setting: Setting) -> object:
    """A file's or variable's value for ``action``, checked by its own type and choices."""
    raw, from_env = setting.raw, setting.source.startswith(ENV_PREFIX)
    where = (f"{setting.source}={raw}" if from_env else f"{key} = {_toml(raw)} in "
             f"{setting.source}")
    if _is_flag(action):
        value = _truth(raw, from_env)
        if value is None:
            raise UsageError(f"{where}: '{key}' is a flag: write true or false"
                             + (" (or 1, 0, yes, no, on, off)" if from_env else ""))
        return value
    if _is_list(action):
        if from_env:
            items: list[object] = _env_as_toml(action, str(raw))  # type: ignore[assignment]
        elif isinstance(raw, list):
            items = raw
        else:
            raise UsageError(f"{where}: '{key}' is repeatable: write an array, "
                             f"{key} = [\"...\", \"...\"]")
        return [_one(action, key, item, where) for item in items]
    return _one(action, key, raw, where)


def _truth(raw: object, from_env: bool) -> bool | None:
    if isinstance(raw, bool):
        return raw
    if from_env and isinstance(raw, str):
        word = raw.strip().lower()
        return True if word in TRUE_WORDS else False if word in FALSE_WORDS else None
    return None


def _one(action: argparse.Action, key: str, raw: object, where: str) -> object:
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise UsageError(f"{where}: '{key}' takes one value (a string or a number)")
    text = raw if isinstance(raw, str) else str(raw)
    value: object = text
    if action.type is not None:
        convert_text: Callable[[str], object] = action.type  # type: ignore[assignment]
        try:
            value = convert_text(text)
        except argparse.ArgumentTypeError as exc:
            raise UsageError(f"{where}: {exc}") from None
        except (TypeError, ValueError):
            name = getattr(action.type, "__name__", "value")
            raise UsageError(f"{where}: invalid {name} value: '{text}'") from None
    if action.choices is not None and value not in action.choices:
        choices = ", ".join(map(str, action.choices))
        raise UsageError(f"{where}: '{text}' is not one of {choices}")
    return value


def _env_as_toml(action: argparse.Action, text: str) -> object:
    if _is_flag(action):
        return _truth(text, from_env=True)
    if _is_list(action):
        return [p.strip() for p in text.split(",") if p.strip()]
    return text


def _toml(value: object) -> str:
    """A TOML rendering of a raw value (strings, numbers, booleans, arrays of those)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    import json  # noqa: PLC0415 - config show only

    return json.dumps(str(value), ensure_ascii=False)


# ---- sockferry config show -------------------------------------------------------------


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "config", help=SUMMARY,
        description="Show the value every option of COMMAND (default: every command) "
        "takes when not given on the command line, and where it comes from: a "
        "SOCKFERRY_* variable, a config file and line, or the default. Files: --config "
        f"FILE, else {SYSTEM_FILE} and then $XDG_CONFIG_HOME/sockferry/config.toml "
        "(~/.config), merged key by key with the user's winning.")
    parser.add_argument("action", choices=("show",))
    parser.add_argument("command_name", nargs="?", metavar="COMMAND",
                        help="the command whose settings to show")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, console: Console) -> int:
    from sockferry.cli import COMMANDS, command_parser  # noqa: PLC0415 - a cycle otherwise

    names = [n for n in COMMANDS if n != "config"]
    if args.command_name is not None and args.command_name not in names:
        raise UsageError(f"unknown command '{args.command_name}': one of {', '.join(names)}")
    files = read_files(getattr(args, "config", None))
    check(files, command_parser, COMMANDS)
    first = True
    for name in [args.command_name] if args.command_name else names:
        parser = command_parser(name)
        if not options(parser):
            continue
        if not first:
            console.print()
        first = False
        for line in _show(name, parser, files):
            console.print(line)
    return ExitCode.OK


def _show(command: str, parser: argparse.ArgumentParser, files: Files) -> Iterator[str]:
    defaults = hide_defaults(parser)
    namespace = argparse.Namespace()
    for action in options(parser).values():
        setattr(namespace, action.dest, action.default)
    sources = resolve(command, parser, namespace, defaults, files, os.environ)
    sections = [files.get(command, {}), files.get(CLIENT_SECTION, {})]
    yield f"[{command}]"
    for key, source in sources.items():
        if source == DEFAULT:
            # A flag is off by default (-4's default is the family, not the flag's state).
            raw = False if _is_flag(options(parser)[key]) else defaults[key]
        elif source.startswith(ENV_PREFIX):
            raw = _env_as_toml(options(parser)[key], os.environ[source])
        else:
            raw = next(s[key].raw for s in sections if key in s)
        if raw is None:
            yield f"# {key} is not set ({source})"
        else:
            yield f"{key} = {_toml(raw)}  # {source}"
