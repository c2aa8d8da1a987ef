"""Man pages, sockferry(1) and sockferry-COMMAND(1), made from the argparse parsers.

Nothing is written twice: synopses, options, choices, defaults and help come from the
parsers, the exit statuses from ``runtime.EXIT_CODE_MEANINGS``, the variables and files
from ``config``.  ``pages()`` is pure text; ``main`` (``python -m sockferry.cli.manual
DIR``, run by scripts/man) writes it out.

The roff is plain man(7): every ``-`` is ``\\-`` (an ASCII hyphen-minus one can copy,
never a typographic hyphen nor a line break), literal words carry ``\\%`` so that groff
never hyphenates a key or a path, and a backslash is ``\\e``.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from sockferry import __version__
from sockferry.cli import COMMANDS, build_parser, command_parser, config
from sockferry.cli.runtime import EXIT_CODE_MEANINGS

SECTION = "1"
# Wide enough that argparse never wraps a usage line: the man page wraps it.
_USAGE_WIDTH = 10_000
_CHARS = {"\\": "\\e", "-": "\\-", "'": "\\(aq", "`": "\\(ga", '"': "\\(dq"}
# A word holding one of these (inside it, not as its closing punctuation) is a literal:
# an option, a path, a key, a variable, an address.
_LITERAL = re.compile(r"[-_/.:$=~@*\\0-9]")
_SYNOPSIS_TOKEN = re.compile(
    r"(?P<option>(?<![\w:])-{1,2}[A-Za-z0-9?][\w-]*)"
    r"|(?P<choices>\{[^}]*\})"
    r"|(?P<punct>\.\.\.|[\[\]()|])"
    r"|(?P<word>[^\s\[\]()|{}]+)"
    r"|(?P<space>\s+)")
FILES = (
    (str(config.SYSTEM_FILE), "system-wide settings, read first"),
    ("$XDG_CONFIG_HOME/sockferry/config.toml",
     "the user's settings (~/.config when XDG_CONFIG_HOME is unset); a key here wins"),
    ("$XDG_CONFIG_HOME/sockferry/token",
     "the shared token (mode 0600), made by the first serve or by sockferry token new"),
    ("$XDG_CONFIG_HOME/sockferry/known_hosts",
     "TLS certificates trusted on first use (sockferry known-hosts)"),
)


def escape(text: str) -> str:
    """Running text as roff: special characters escaped, literal words unhyphenated.

    Non-ASCII characters become ``\\[uXXXX]`` (groff reads ASCII), controls a space."""
    words = [_word(word) for word in text.split()]
    line = " ".join(words)
    return "\\&" + line if line.startswith((".", "'")) else line


def _word(word: str) -> str:
    out = _plain(word)
    core = word.rstrip(".,;:)").lstrip("(")
    return "\\%" + out if _LITERAL.search(core) else out


def _char(c: str) -> str:
    if c in _CHARS:
        return _CHARS[c]
    if c.isascii():
        return c if c.isprintable() else " "
    return f"\\[u{ord(c):04X}]"


def _plain(text: str) -> str:
    """Characters escaped, nothing added: for a piece of a larger word."""
    return "".join(map(_char, text))


def bold(text: str) -> str:
    return f"\\fB{_plain(text)}\\fR"


def italic(text: str) -> str:
    return f"\\fI{_plain(text)}\\fR"


def literal(roff: str) -> str:
    """``\\%`` before every word of ``roff`` (``\\%`` inside a word would mark a
    hyphenation point instead of forbidding one)."""
    return " ".join("\\%" + word for word in roff.split(" "))


def _quoted(text: str) -> str:
    """A macro argument: quoted, so that spaces do not split it (and without ``\\%``,
    which a title or heading does not need)."""
    return '"' + " ".join(map(_plain, text.split())) + '"'


# ---- what the parsers say ----------------------------------------------------------------


def _formatter(parser: argparse.ArgumentParser) -> argparse.HelpFormatter:
    return argparse.HelpFormatter(prog=parser.prog, width=_USAGE_WIDTH)


def usage_line(parser: argparse.ArgumentParser) -> str:
    """The parser's usage on one line, without ``usage:`` (argparse's own text)."""
    formatter = _formatter(parser)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups,
                        prefix="")
    return " ".join(formatter.format_help().split())


def help_text(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """An action's help with ``%(default)s`` and the like expanded, and its default
    appended when the help does not give it."""
    text = " ".join(_formatter(parser)._expand_help(action).split()) if action.help else ""
    default = action.default
    shown = default not in (None, False, argparse.SUPPRESS, [], "") and action.nargs != 0
    if shown and "default" not in text.lower():
        text = f"{text} (default: {default})".strip()
    return text


def _metavar(action: argparse.Action) -> str:
    """roff for the value an action takes: {a|b} (literal choices) or an italic name."""
    if action.choices is not None:
        return "{" + "|".join(bold(str(c)) for c in action.choices) + "}"
    if isinstance(action.metavar, tuple):
        return " ".join(italic(m) for m in action.metavar)
    name = action.metavar or (action.dest if not action.option_strings
                              else action.dest.upper())
    return italic(name)


def _value(action: argparse.Action) -> str:
    one = _metavar(action)
    nargs = action.nargs
    if nargs == 0:
        return ""
    if nargs == "?":
        return f"[{one}]"
    if nargs == "*":
        return f"[{one} ...]"
    if nargs == "+":
        return f"{one} [{one} ...]"
    if isinstance(nargs, int) and not isinstance(action.metavar, tuple):
        return " ".join([one] * nargs)
    return one


def _tag(action: argparse.Action) -> str:
    """The .TP tag of an option or a positional argument."""
    if not action.option_strings:  # how many is the synopsis's business
        return literal(_metavar(action))
    names = ", ".join(bold(name) for name in action.option_strings)
    value = _value(action)
    return literal(f"{names} {value}" if value else names)


def _synopsis(parser: argparse.ArgumentParser) -> list[str]:
    """The usage line as roff: the command bold, options and choices bold, names of
    values italic; each bracketed group held together on one output line."""
    line = usage_line(parser)
    assert line.startswith(parser.prog), (line, parser.prog)
    groups = _top_level_groups(line[len(parser.prog):])
    rendered = ["\\%" + _synopsis_group(group).replace(" ", "\\ ") for group in groups]
    return [" ".join([bold(parser.prog).replace(" ", "\\ "), *rendered])]


def _top_level_groups(text: str) -> list[str]:
    """``[-h] [--a X] ROOT`` -> ``["[-h]", "[--a X]", "ROOT"]``: spaces outside brackets
    split."""
    groups: list[str] = []
    depth, current = 0, ""
    for c in text:
        if c in "[({":
            depth += 1
        elif c in "])}":
            depth -= 1
        if c == " " and depth == 0:
            if current == "..." and groups:  # "COMMAND ...": one group
                groups[-1] += " ..."
            elif current:
                groups.append(current)
            current = ""
        else:
            current += c
    if current:
        groups.append(current)
    return groups


def _synopsis_group(group: str) -> str:
    out = []
    for match in _SYNOPSIS_TOKEN.finditer(group):
        kind, token = match.lastgroup, match.group()
        if kind == "option":
            out.append(bold(token))
        elif kind == "choices":
            out.append("{" + "|".join(bold(c) for c in token[1:-1].split(",")) + "}")
        elif kind == "word":
            out.append(italic(token))
        elif kind == "space":
            out.append(" ")
        else:
            out.append(_plain(token))
    return "".join(out)


def _groups(parser: argparse.ArgumentParser) -> list[tuple[str, list[argparse.Action]]]:
    """(title, visible actions) of each argument group, positional arguments first; the
    sub-command action of the top parser is left out (sockferry(1) lists the commands)."""
    found = []
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if a.help != argparse.SUPPRESS
                   and not isinstance(a, argparse._SubParsersAction)]
        if actions:
            title = group.title or "options"
            found.append((title[:1].upper() + title[1:], actions))
    found.sort(key=lambda item: not all(not a.option_strings for a in item[1]))
    return found


# ---- roff -------------------------------------------------------------------------------


def _header(name: str, summary: str) -> list[str]:
    return [
        ".\\\" Generated by python -m sockferry.cli.manual from the argparse parsers; "
        "do not edit.",
        f".TH {_quoted(name.upper())} {SECTION} \"\" {_quoted(f'sockferry {__version__}')} "
        "\"User Commands\"",
        # Ragged right: long paths and option names would stretch justified lines.
        ".ad l",
        ".SH NAME",
        f"{_plain(name)} \\- {escape(summary)}",
    ]


def _paragraphs(*texts: str | None) -> list[str]:
    lines: list[str] = []
    for text in texts:
        if text:
            lines += [".PP", escape(text)]
    return lines[1:] if lines else lines


def _entries(items: Iterable[tuple[str, str]]) -> list[str]:
    """.TP entries: (tag, already-roff) -> lines."""
    lines = []
    for tag, body in items:
        lines += [".TP", tag]
        if body:
            lines.append(body)
    return lines


def _options(parser: argparse.ArgumentParser) -> list[str]:
    lines = [".SH OPTIONS"]
    for title, actions in _groups(parser):
        lines += [f".SS {_quoted(title)}"]
        lines += _entries((_tag(a), escape(help_text(parser, a))) for a in actions)
    return lines


def _see_also(names: Sequence[str]) -> list[str]:
    lines = [".SH \"SEE ALSO\""]
    for i, name in enumerate(names):
        comma = "," if i < len(names) - 1 else ""
        lines.append(f".BR \\%{_plain(name)} ({SECTION}){comma}")
    return lines


def overview() -> str:
    """sockferry(1): the commands, global options, exit status, variables and files."""
    parser = build_parser(None)
    lines = _header("sockferry", (parser.description or "").rstrip("."))
    lines += [".SH SYNOPSIS", *_synopsis(parser)]
    lines += [".SH DESCRIPTION", *_paragraphs(parser.description, parser.epilog)]
    lines += [".SS Commands"]
    lines += _entries((literal(bold(name)), f"{escape(summary)}; see "
                       f"{literal(bold(f'sockferry-{name}'))}({SECTION}).")
                      for name, (_, summary) in COMMANDS.items())
    lines += _options(parser)
    lines += [".SH \"EXIT STATUS\"", *_paragraphs(
        "The codes are the same in every command. When several files are copied, the "
        "code is that of the first failure; the other files are still copied.")]
    lines += _entries((literal(bold(str(code))), escape(meaning))
                      for code, meaning in EXIT_CODE_MEANINGS.items())
    lines += [".SH ENVIRONMENT"]
    lines += _entries([
        (literal(bold(config.ENV_PREFIX) + italic("OPTION")), escape(
            "Every option of every command but the global ones: its long name in capitals "
            f"with _ for - ({config.env_name('max-connections')}=512 sets "
            "--max-connections). A flag takes 1, 0, true, false, yes, no, on or off, a "
            "repeatable option a comma-separated list. It applies to every command that "
            "has the option, and outranks the config files; the command line outranks it. "
            "Each command's page lists its variables.")),
        (literal(bold(config.TOKEN_VARIABLE)), escape(
            "The token itself, for a client: it outranks a token-file from a config file "
            f"and yields to --token-file and ${config.env_name('token-file')}.")),
        (literal(bold("XDG_CONFIG_HOME")), escape(
            "Where the user's config file, token and known hosts are (default ~/.config).")),
        (literal(bold("LISTEN_FDS") + ", " + bold("NOTIFY_SOCKET")), escape(
            "Under systemd, a server serves the sockets of socket activation and reports "
            "READY=1 and STOPPING=1.")),
    ])
    lines += [".SH FILES", *_paragraphs(
        "Config files are TOML; their sections are command names ([serve], [tftp-serve], "
        f"...) and [{config.CLIENT_SECTION}] for {', '.join(config.CLIENT_COMMANDS)}; "
        "their keys are the options' long names. --config FILE reads that file alone "
        "(--config /dev/null none); otherwise both files are read and merged key by key.")]
    lines += _entries((literal(bold(path)), escape(what)) for path, what in FILES)
    lines += _see_also([f"sockferry-{name}" for name in COMMANDS])
    return "\n".join(lines) + "\n"


def command_page(name: str) -> str:
    """sockferry-NAME(1): synopsis, description, every argument and option."""
    parser = command_parser(name)
    lines = _header(f"sockferry-{name}", COMMANDS[name][1])
    lines += [".SH SYNOPSIS", *_synopsis(parser)]
    lines += [".SH DESCRIPTION", *_paragraphs(parser.description, parser.epilog)]
    lines += _options(parser)
    variables = config.options(parser)
    if variables:
        lines += [".SH ENVIRONMENT", *_paragraphs(
            "Each option can be set in a variable; the command line outranks it, and it "
            "outranks the config files (see sockferry(1)).")]
        entries = _entries((literal(bold(config.env_name(key))),
                            "sets " + literal(bold(f"--{key}"))) for key in variables)
        # Compact: after the first entry, .PD 0 drops the blank line between entries.
        lines += [*entries[:3], ".PD 0", *entries[3:], ".PD"]
        sections = [name, config.CLIENT_SECTION] if name in config.CLIENT_COMMANDS else [name]
        lines += [".SH FILES"]
        lines += _entries((literal(bold(path)), escape(
            f"{what}; this command reads the section{'s' if len(sections) > 1 else ''} "
            + " then ".join(f"[{s}]" for s in sections) + "."))
            for path, what in FILES[:2])
    lines += _see_also(["sockferry"])
    return "\n".join(lines) + "\n"


def pages() -> dict[str, str]:
    """File name -> roff, for sockferry(1) and every command's page."""
    found = {f"sockferry.{SECTION}": overview()}
    for name in COMMANDS:
        found[f"sockferry-{name}.{SECTION}"] = command_page(name)
    return found


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sockferry.cli.manual DIR``: write every page into DIR."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m sockferry.cli.manual DIR", file=sys.stderr)
        return 2
    out = Path(args[0])
    out.mkdir(parents=True, exist_ok=True)
    for file_name, text in pages().items():
        (out / file_name).write_text(text, encoding="ascii")
        print(out / file_name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
