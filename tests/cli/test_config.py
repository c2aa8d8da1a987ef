"""Config files and SOCKFERRY_* variables: precedence, errors, `config show`, a real serve."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from sockferry.cli import COMMANDS, command_parser, main, parse_command_line
from sockferry.cli import config as cfg
from sockferry.errors import UsageError
from tests.cli.server_process import running
from tests.ferry.harness import write_token


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No SOCKFERRY_* setting from the caller, and a private user config directory."""
    for name in list(os.environ):
        if name.startswith(cfg.ENV_PREFIX):
            monkeypatch.delenv(name)
    home = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    return home


def test_precedence_flag_env_file_default(clean_env: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text("[serve]\nmax-connections = 7\nbacklog = 9\ngrace = 3\n"
                    "listen = [':2400', 'unix:/run/s.sock']\n")
    monkeypatch.setenv("SOCKFERRY_MAX_CONNECTIONS", "8")
    monkeypatch.setenv("SOCKFERRY_BACKLOG", "11")
    args = parse_command_line(["--config", str(conf), "serve", "/srv",
                               "--max-connections", "6"])
    assert args.max_connections == 6      # flag over env over file
    assert args.backlog == 11             # env over file
    assert args.grace == 3.0              # file over default, through the option's type
    assert args.idle_timeout == 120.0     # default
    assert args.listen == [":2400", "unix:/run/s.sock"]  # an array for a repeatable option
    assert args.umask == 0o22             # a string default, converted as argparse would
    # A repeatable option on the command line replaces the file's, not adds to it.
    args = parse_command_line(["serve", "/srv", "--listen", ":1", "--config", str(conf)])
    assert args.listen == [":1"]


def test_user_file_over_system_and_client_section(clean_env: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    system = tmp_path / "etc.toml"
    system.write_text("[client]\nport = 2400\ntls = true\n[send]\ntimeout = 4\n")
    monkeypatch.setattr(cfg, "SYSTEM_FILE", system)
    (clean_env / "sockferry").mkdir(parents=True)
    (clean_env / "sockferry" / "config.toml").write_text("[client]\nport = 2401\n")
    args = parse_command_line(["send", "a", ":"])
    assert (args.port, args.tls, args.timeout) == (2401, True, 4.0)
    assert parse_command_line(["ls", ":"]).timeout == 10.0  # [send] is send's alone
    monkeypatch.setenv("SOCKFERRY_TLS", "off")
    assert parse_command_line(["get", ":a", "."]).tls is False


def test_options_sharing_a_setting(clean_env: Path, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """-4/-6 set one family and --include/--exclude one rule list: the first layer naming
    any of them decides, include patterns from a file come first, and the command line
    replaces the lot."""
    conf = tmp_path / "c.toml"
    conf.write_text("[client]\nipv4 = true\n[send]\nipv6 = true\n"
                    "exclude = ['*.jpg']\ninclude = ['keep.jpg']\n")
    args = parse_command_line(["--config", str(conf), "send", "a", ":"])
    assert args.family == socket.AF_INET6              # [send] before [client]
    assert args.filters == [(True, "keep.jpg"), (False, "*.jpg")]
    assert parse_command_line(["--config", str(conf), "ls", ":"]).family == socket.AF_INET
    monkeypatch.setenv("SOCKFERRY_IPV4", "1")
    assert parse_command_line(["--config", str(conf), "send", "a", ":"]).family == \
        socket.AF_INET                                 # the environment before files
    args = parse_command_line(["--config", str(conf), "send", "-6", "--exclude", "x",
                               "a", ":"])
    assert (args.family, args.filters) == (socket.AF_INET6, [(False, "x")])
    monkeypatch.delenv("SOCKFERRY_IPV4")
    conf.write_text("[send]\nipv4 = true\nipv6 = true\n")
    with pytest.raises(UsageError, match=r"'ipv4' .* and 'ipv6' .* exclude each other"):
        parse_command_line(["--config", str(conf), "send", "a", ":"])
    conf.write_text("[send]\nipv4 = false\n")
    assert parse_command_line(["--config", str(conf), "send", "a", ":"]).family == 0


def test_token_variable_beats_a_files_token_file(clean_env: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text("[client]\ntoken-file = '/etc/t'\n")
    assert parse_command_line(["--config", str(conf), "ls", ":"]).token_file == "/etc/t"
    monkeypatch.setenv("SOCKFERRY_TOKEN", "x" * 40)
    assert parse_command_line(["--config", str(conf), "ls", ":"]).token_file is None
    monkeypatch.setenv("SOCKFERRY_TOKEN_FILE", "/env/t")
    assert parse_command_line(["--config", str(conf), "ls", ":"]).token_file == "/env/t"
    # SOCKFERRY_TOKEN stays the token: no option may take its name.
    for name in COMMANDS:
        assert "token" not in cfg.options(command_parser(name))


@pytest.mark.parametrize(("text", "message"), [
    ("[serve]\nmax-conections = 3\n",
     "unknown key 'max-conections' in [serve] of {conf} line 2"),
    ("[client]\nlisten = [':1']\n", "unknown key 'listen' in [client] of {conf} line 2"),
    ("[sevre]\nbacklog = 1\n", "unknown section [sevre] in {conf}"),
    ("[serve]\nmax-connections = 0\n",
     "max-connections = 0 in {conf} line 2: '0' is not a positive whole number"),
    ("[serve]\nfsync = 'sometimes'\n", "'sometimes' is not one of none, batch, each"),
    ("[serve]\ntls = 'yes'\n", "'tls' is a flag: write true or false"),
    ("[serve]\nlisten = ':1'\n", "'listen' is repeatable: write an array"),
    ("[serve\n", "is not valid TOML: Expected ']'"),
])
def test_bad_file_is_a_usage_error_naming_the_cause(clean_env: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str],
                                                    text: str, message: str) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text(text)
    # Keys and sections are checked whatever the command; values when their command runs.
    code = main(["--config", str(conf), "serve", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert message.format(conf=conf) in err
    assert "Traceback" not in err


def test_bad_variable_names_it(clean_env: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SOCKFERRY_MAX_FILE_SIZE", "lots")
    assert main(["--config", os.devnull, "serve", "/srv"]) == 2
    assert ("SOCKFERRY_MAX_FILE_SIZE=lots: 'lots' is not a byte count like 500M or 16G"
            in capsys.readouterr().err)


def test_config_show_says_where_each_value_comes_from(clean_env: Path,
                                                      tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text("[serve]\nmax-connections = 512\n\n[client]\nport = 2400\n")
    env = {**os.environ, "SOCKFERRY_BACKLOG": "64", "SOCKFERRY_TLS": "1"}
    out = subprocess.run([sys.executable, "-m", "sockferry", "config", "show", "serve",
                          "--config", str(conf)], env=env, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    lines = out.splitlines()
    assert lines[0] == "[serve]"
    assert f"max-connections = 512  # {conf} line 2" in lines
    assert "backlog = \"64\"  # SOCKFERRY_BACKLOG" in lines
    assert "tls = true  # SOCKFERRY_TLS" in lines
    assert 'umask = "022"  # default' in lines
    assert "# token-file is not set (default)" in lines
    every = subprocess.run([sys.executable, "-m", "sockferry", "config", "show",
                            "--config", str(conf)], env=env, capture_output=True, text=True,
                           timeout=60, check=True).stdout
    assert f"port = 2400  # {conf} line 5" in every  # [client], shown under send/get/ls
    assert {f"[{n}]" for n in ("serve", "send", "get", "ls", "tftp-serve")} <= set(
        every.splitlines())


def test_serve_started_from_a_config_file_serves_a_transfer(clean_env: Path,
                                                            tmp_path: Path) -> None:
    root, token = tmp_path / "root", write_token(tmp_path / "token")
    root.mkdir()
    sock = tmp_path / "s.sock"
    conf = tmp_path / "c.toml"
    conf.write_text(f"[serve]\nlisten = ['unix:{sock}']\ntoken-file = '{token}'\n"
                    "read-only = false\n\n"
                    f"[client]\nunix = '{sock}'\ntoken-file = '{token}'\n")
    source = tmp_path / "hello.txt"
    source.write_text("from a config file\n")
    with running("--config", str(conf), "serve", str(root)) as server:
        server.wait_for(r"listening on")
        done = subprocess.run([sys.executable, "-m", "sockferry", "--config", str(conf),
                               "send", str(source), ":"], capture_output=True, text=True,
                              timeout=60, check=False)
        assert done.returncode == 0, done.stderr
    assert (root / "hello.txt").read_text() == "from a config file\n"


def test_the_readmes_config_file_is_valid(clean_env: Path, tmp_path: Path) -> None:
    from tests.test_readme import readme_blocks  # noqa: PLC0415

    [example] = [b for b in readme_blocks() if b.kind == "toml"]
    conf = tmp_path / "c.toml"
    conf.write_text(example.text)
    serve = parse_command_line(["--config", str(conf), "serve", "/srv"])
    assert (serve.max_connections, serve.umask, serve.fsync) == (512, 0o27, "each")
    assert serve.listen == [":2345", "unix:/run/sockferry.sock"]
    send = parse_command_line(["--config", str(conf), "send", "a", ":"])
    assert (send.port, send.tls) == (2400, True)
