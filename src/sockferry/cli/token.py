"""``sockferry token new|show [FILE]``: make the shared token, or print it to copy it."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sockferry.cli.console import Console
from sockferry.cli.runtime import ExitCode

SUMMARY = "make a new shared token, or print the one a server uses"


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "token", help=SUMMARY,
        description="The token is the secret a server and its clients share "
        "(default file ~/.config/sockferry/token, mode 0600). 'new' writes a fresh random "
        "token; 'show' prints the token on stdout and, on stderr, where a client puts it.")
    parser.add_argument("action", choices=("new", "show"))
    parser.add_argument("file", nargs="?", metavar="FILE",
                        help="the token file (default ~/.config/sockferry/token)")
    parser.add_argument("--token-file", metavar="FILE", dest="token_file",
                        help="the same as FILE")
    parser.add_argument("--force", action="store_true",
                        help="new: replace the token of an existing file")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, console: Console) -> int:
    from sockferry.errors import UsageError  # noqa: PLC0415
    from sockferry.ferry import tokens  # noqa: PLC0415

    if args.file and args.token_file and args.file != args.token_file:
        raise UsageError("give the token file once: FILE or --token-file FILE")
    path = Path(args.file or args.token_file or tokens.default_token_path())
    if args.action == "new":
        if args.force and path.exists():
            tokens.replace_token(path)
            console.notice(f"replaced the token in {path} (mode 0600); every client "
                           "needs the new one (see: sockferry token show)")
        else:
            tokens.create_token(path)
            use = ("sockferry serve uses it by default"
                   if path == tokens.default_token_path()
                   else f"serve with: sockferry serve --token-file {path} ROOT")
            console.notice(f"wrote a new token to {path} (mode 0600); {use}")
        return ExitCode.OK
    if args.force:
        raise UsageError("--force is for 'token new'")
    token = tokens.load_token(path)
    console.print(token.decode("ascii", "replace"))
    console.notice(f"on a client, put this line in {tokens.default_token_path()} (chmod "
                   f"600) or pass it as {tokens.ENV_VAR}=... or --token-file FILE")
    return ExitCode.OK
