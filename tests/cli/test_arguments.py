"""The command line takes options and arguments in any order (issue 13)."""

from __future__ import annotations

import io
import logging

import pytest

from sockferry.cli import main, parse_command_line
from sockferry.cli.runtime import ExitCode


def test_an_option_between_positionals_is_taken() -> None:
    # The README's own synopsis order: address, option, message.
    args = parse_command_line(["sctp-send", "127.0.0.1:9899", "--stream", "2", "hello"])
    assert (args.address, args.stream, args.messages) == ("127.0.0.1:9899", 2, ["hello"])
    args = parse_command_line(["send", "a.txt", "-v", "b.txt", ":"])
    assert (args.sources, args.dest, args.verbose) == (["a.txt", "b.txt"], ":", True)
    args = parse_command_line(["tftp-put", "local", "-q", "host:69", "--blksize", "512"])
    assert (args.local, args.server, args.quiet, args.blksize) == ("local", "host:69",
                                                                  True, 512)


@pytest.mark.parametrize("argv", [
    ["--debug", "-q", "ls", "h:"],
    ["ls", "h:", "--debug", "-q"],
    ["-q", "ls", "--debug", "h:"],
])
def test_global_options_before_or_after_the_command(argv: list[str]) -> None:
    args = parse_command_line(argv)
    assert (args.command, args.target, args.debug, args.quiet, args.verbose) == (
        "ls", "h:", True, True, False)


def test_global_options_default_to_off_in_every_command() -> None:
    for argv in (["token", "new"], ["probe", "h:1"], ["known-hosts", "list"],
                 ["serve", "/srv"], ["sctp-serve"], ["tftp-serve", "/srv"]):
        args = parse_command_line(argv)
        assert (args.debug, args.quiet, args.verbose) == (False, False, False), argv


def test_double_dash_ends_options() -> None:
    args = parse_command_line(["send", "-v", "--", "-a.txt", "--b", "h:"])
    assert (args.sources, args.dest, args.verbose) == (["-a.txt", "--b"], "h:", True)
    args = parse_command_line(["send", "--", "-q", "h:"])
    assert (args.sources, args.quiet) == (["-q"], False)
    args = parse_command_line(["sctp-send", "h", "--stream", "1", "--", "--stream", "x"])
    assert (args.stream, args.messages) == (1, ["--stream", "x"])
    args = parse_command_line(["sctp-send", "h", "--", "-", "--"])
    assert args.messages == ["-", "--"]


def test_usage_errors_point_to_the_command_help() -> None:
    err = io.StringIO()
    assert main(["send", "a.txt", "--bogus", "h:"], io.StringIO(), err) == ExitCode.USAGE
    assert "unrecognized arguments: --bogus (see 'sockferry send --help')" in err.getvalue()
    err = io.StringIO()
    assert main(["sctp-send", "--stream", "x", "h"], io.StringIO(), err) == ExitCode.USAGE
    assert "(see 'sockferry sctp-send --help')" in err.getvalue()
    err = io.StringIO()
    assert main(["nosuch"], io.StringIO(), err) == ExitCode.USAGE
    assert "(see 'sockferry --help')" in err.getvalue()


def test_debug_after_the_command_turns_debug_logs_on(tmp_path: object) -> None:
    err = io.StringIO()
    main(["known-hosts", "list", "--known-hosts", f"{tmp_path}/kh", "--debug"],
         io.StringIO(), err)
    assert logging.getLogger("sockferry").level == logging.DEBUG
    main(["known-hosts", "list", "--known-hosts", f"{tmp_path}/kh"], io.StringIO(), err)
    assert logging.getLogger("sockferry").level == logging.INFO


def test_command_help_lists_the_global_options() -> None:
    out = io.StringIO()
    assert main(["ls", "--help"], out, io.StringIO()) == 0
    assert "--debug" in out.getvalue() and "--quiet" in out.getvalue()
