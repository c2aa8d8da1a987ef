"""``sockferry completion bash|zsh|fish``: a shell completion script, made from the parsers.

What completes where is read off the argparse parsers — command names, each command's
options, the choices of options and arguments that have them, files for the values whose
metavar names a local path — so an option added to a parser completes with no change
here.  ``script(shell)`` is pure text; the command prints it.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sockferry.cli.console import Console
from sockferry.cli.runtime import ExitCode

SUMMARY = "print a shell completion script (bash, zsh or fish) on standard output"
SHELLS = ("bash", "zsh", "fish")
# Metavars that name a local path (HOST:DEST, REMOTE and the like are the peer's).
FILE_METAVARS = frozenset({"FILE", "SOCKET", "DEST", "SRC", "LOCAL"})
DIRECTORY_METAVARS = frozenset({"ROOT"})
COMMAND_METAVAR = "COMMAND"  # config show COMMAND
_DESCRIPTION_CHARS = 60


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "completion", help=SUMMARY,
        description="Print the completion script for SHELL on standard output: command "
        "names, options, choices and file names complete on TAB. Install it once: bash: "
        "sockferry completion bash > ~/.local/share/bash-completion/completions/sockferry; "
        "zsh: sockferry completion zsh > DIR/_sockferry, DIR being on $fpath; fish: "
        "sockferry completion fish > ~/.config/fish/completions/sockferry.fish.")
    parser.add_argument("shell", choices=SHELLS, metavar="SHELL",
                        help="the shell the script is for: bash, zsh or fish")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, console: Console) -> int:
    # Written as is: the script is this program's own text, not a peer's, and
    # Console.print would escape its backslashes and newlines.
    console.stdout.write(script(args.shell))
    console.stdout.flush()
    return ExitCode.OK


# ---- what the parsers say ----------------------------------------------------------------


@dataclass(frozen=True)
class Values:
    """What completes a value: literal choices, file names or directory names."""

    choices: tuple[str, ...] = ()
    files: bool = False
    directories: bool = False

    def __or__(self, other: Values) -> Values:
        return Values(tuple(dict.fromkeys(self.choices + other.choices)),
                      self.files or other.files,
                      self.directories or other.directories)

    @property
    def kind(self) -> str:
        """One word for the shells' tables: choices, files, directories or none."""
        if self.choices:
            return "choices"
        return "files" if self.files else "directories" if self.directories else "none"


@dataclass(frozen=True)
class Option:
    names: tuple[str, ...]
    description: str
    values: Values | None  # None: a flag
    repeatable: bool
    excludes: tuple[str, ...]  # the option strings it cannot be given with (itself too)


@dataclass(frozen=True)
class Command:
    """A command as the shells see it; ``name`` "" is sockferry itself, before any."""

    name: str
    summary: str
    options: tuple[Option, ...]
    positionals: tuple[Values, ...]  # the n-th argument
    rest: Values | None  # every argument after those, when one takes any number


def values_of(action: argparse.Action, commands: Iterable[str]) -> Values:
    if action.choices is not None:
        return Values(choices=tuple(str(c) for c in action.choices))
    metavar = action.metavar if isinstance(action.metavar, str) else ""
    if metavar in FILE_METAVARS:
        return Values(files=True)
    if metavar in DIRECTORY_METAVARS:
        return Values(directories=True)
    if metavar == COMMAND_METAVAR:
        return Values(choices=tuple(commands))
    return Values()


def describe(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The help's first clause, short enough for a completion menu."""
    from sockferry.cli.manual import help_text  # noqa: PLC0415 - argparse text only

    text = re.split(r"; |\. ", help_text(parser, action), maxsplit=1)[0].rstrip(".")
    if len(text) > _DESCRIPTION_CHARS:
        text = text[:_DESCRIPTION_CHARS].rsplit(" ", 1)[0] + "..."
    return text


def command_of(name: str, summary: str, parser: argparse.ArgumentParser,
               commands: Iterable[str]) -> Command:
    commands = tuple(commands)
    exclusive: dict[int, tuple[str, ...]] = {}
    for group in parser._mutually_exclusive_groups:
        strings = tuple(s for a in group._group_actions for s in a.option_strings)
        exclusive.update({id(a): strings for a in group._group_actions})
    options, arguments = [], []
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction):
            continue
        if not action.option_strings:
            arguments.append(action)
            continue
        takes_value = action.nargs != 0
        options.append(Option(
            names=tuple(action.option_strings), description=describe(parser, action),
            values=values_of(action, commands) if takes_value else None,
            repeatable=isinstance(action, argparse._AppendAction),
            excludes=exclusive.get(id(action), tuple(action.option_strings))))
    positionals: list[Values] = []
    rest: Values | None = None
    for i, action in enumerate(arguments):
        if action.nargs in ("*", "+", argparse.REMAINDER):
            # Which word belongs to which later argument is unknown: offer them all.
            rest = Values()
            for later in arguments[i:]:
                rest |= values_of(later, commands)
            if action.nargs == "+":
                positionals.append(values_of(action, commands))
            break
        count = action.nargs if isinstance(action.nargs, int) else 1
        positionals += [values_of(action, commands)] * count
    return Command(name, summary, tuple(options), tuple(positionals), rest)


def model() -> tuple[Command, list[Command]]:
    """sockferry itself (its options, before a command) and every command."""
    from sockferry.cli import COMMANDS, build_parser, command_parser  # noqa: PLC0415

    top = command_of("", "", build_parser(None), COMMANDS)
    commands = [command_of(name, summary, command_parser(name), COMMANDS)
                for name, (_, summary) in COMMANDS.items()]
    return top, commands


def script(shell: str) -> str:
    top, commands = model()
    return {"bash": bash, "zsh": zsh, "fish": fish}[shell](top, commands)


# ---- bash -------------------------------------------------------------------------------


def _bash_word(values: Values) -> str:
    """A table entry: ``files``, ``directories``, ``none`` or ``choices a b c``."""
    return " ".join(("choices", *values.choices)) if values.choices else values.kind


def _sh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def bash(top: Command, commands: list[Command]) -> str:
    every = [top, *commands]
    options = "\n".join(
        f"        {_sh_quote(c.name)}) echo "
        f"{_sh_quote(' '.join(n for o in c.options for n in o.names))} ;;" for c in every)
    values = "\n".join(
        f"        {_sh_quote(f'{c.name} {n}')}) echo {_sh_quote(_bash_word(o.values))} ;;"
        for c in every for o in c.options if o.values is not None for n in o.names)
    positionals = []
    for c in commands:
        positionals += [f"        {_sh_quote(f'{c.name} {i}')}) echo "
                        f"{_sh_quote(_bash_word(v))} ;;" for i, v in enumerate(c.positionals)]
        if c.rest is not None:
            positionals.append(f"        {_sh_quote(c.name + ' ')}*) echo "
                               f"{_sh_quote(_bash_word(c.rest))} ;;")
    names = " ".join(c.name for c in commands)
    return BASH_TEMPLATE.format(commands=_sh_quote(names), options=options, values=values,
                                positionals="\n".join(positionals))


BASH_TEMPLATE = r"""# Bash completion for sockferry (`sockferry completion bash`, from its parsers).
# Install it as ~/.local/share/bash-completion/completions/sockferry.

_sockferry_options() {{  # COMMAND ("" before one): its options
    case $1 in
{options}
    esac
}}

_sockferry_values() {{  # COMMAND OPTION: what its value is; fails for a flag
    case "$1 $2" in
{values}
        *) return 1 ;;
    esac
}}

_sockferry_positional() {{  # COMMAND INDEX: what its INDEX-th argument is
    case "$1 $2" in
{positionals}
        *) echo none ;;
    esac
}}

_sockferry_reply() {{  # WHAT CUR PREFIX: fill COMPREPLY
    local what=$1 cur=$2 prefix=$3
    case $what in
        choices\ *)
            mapfile -t COMPREPLY < <(compgen -P "$prefix" -W "${{what#choices }}" -- "$cur") ;;
        files)
            compopt -o filenames 2>/dev/null
            mapfile -t COMPREPLY < <(compgen -P "$prefix" -f -- "$cur") ;;
        directories)
            compopt -o filenames 2>/dev/null
            mapfile -t COMPREPLY < <(compgen -P "$prefix" -d -- "$cur") ;;
    esac
}}

_sockferry() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} command="" expect="" word what
    local -i i position=0 ended=0
    COMPREPLY=()
    # Which command, which argument: the words before the cursor.  COMP_WORDBREAKS holds
    # '=' by default, so '--opt=value' comes as '--opt' '=' 'value'.
    for ((i = 1; i < COMP_CWORD; i++)); do
        word=${{COMP_WORDS[i]}}
        if [[ -n $expect ]]; then
            [[ $word == "=" ]] || expect=""  # '=' then the value, or the value itself
            continue
        fi
        if ((!ended)) && [[ $word == -* ]]; then
            if [[ $word == -- ]]; then
                ended=1
            elif [[ $word != *=* ]] && _sockferry_values "$command" "$word" >/dev/null; then
                expect=$word
            fi
        elif [[ -z $command ]]; then
            command=$word
        elif [[ $word != "=" ]]; then
            position+=1
        fi
    done
    if [[ -n $expect ]]; then  # the value of the option before: '--opt VALUE', '--opt=VALUE'
        [[ $cur == "=" ]] && cur=""
        what=$(_sockferry_values "$command" "$expect") && _sockferry_reply "$what" "$cur" ""
    elif ((!ended)) && [[ $cur == --*=* ]]; then  # '=' is not in COMP_WORDBREAKS
        what=$(_sockferry_values "$command" "${{cur%%=*}}") &&
            _sockferry_reply "$what" "${{cur#*=}}" "${{cur%%=*}}="
    elif ((!ended)) && [[ $cur == -* ]]; then
        mapfile -t COMPREPLY < <(compgen -W "$(_sockferry_options "$command")" -- "$cur")
    elif [[ -z $command ]]; then
        mapfile -t COMPREPLY < <(compgen -W {commands} -- "$cur")
    else
        _sockferry_reply "$(_sockferry_positional "$command" "$position")" "$cur" ""
    fi
    return 0
}}

complete -F _sockferry sockferry
"""


# ---- zsh --------------------------------------------------------------------------------


def _zsh_escape(text: str) -> str:
    """For an _arguments spec or a _describe entry: [, ], : and \\ lose their meaning."""
    return re.sub(r"([\[\]:\\])", r"\\\1", text)


def _zsh_action(values: Values | None) -> str:
    if values is None:
        return ""
    if values.choices:
        return "(" + " ".join(_zsh_escape(c) for c in values.choices) + ")"
    if values.files:
        return "_files"
    return "_files -/" if values.directories else " "


def _zsh_option(option: Option) -> list[str]:
    """One _arguments spec per option string."""
    specs = []
    exclusion = "" if option.repeatable else "(" + " ".join(option.excludes) + ")"
    star = "*" if option.repeatable else ""
    for name in option.names:
        if name in ("-h", "--help"):
            exclusion, star = "(- *)", ""
        spec = f"{exclusion}{star}{name}"
        if option.values is not None:
            spec += "=" if name.startswith("--") else "+"
        spec += f"[{_zsh_escape(option.description)}]"
        if option.values is not None:
            metavar = "value" if option.values.choices else option.names[-1].lstrip("-")
            spec += f":{_zsh_escape(metavar)}:{_zsh_action(option.values)}"
        specs.append(_sh_quote(spec))
    return specs


def _zsh_arguments(command: Command) -> list[str]:
    specs = [spec for option in command.options for spec in _zsh_option(option)]
    for i, values in enumerate(command.positionals, start=1):
        specs.append(_sh_quote(f"{i}:argument:{_zsh_action(values)}"))
    if command.rest is not None:
        specs.append(_sh_quote(f"*:argument:{_zsh_action(command.rest)}"))
    return specs


def _zsh_function(command: Command) -> str:
    return f"_sockferry_{command.name.replace('-', '_')}"


def zsh(top: Command, commands: list[Command]) -> str:
    parts = [ZSH_HEADER]
    for command in commands:
        lines = " \\\n    ".join(["_arguments -s -S", *_zsh_arguments(command)])
        parts.append(f"{_zsh_function(command)}() {{\n  {lines}\n}}\n")
    described = "\n".join(f"    {_sh_quote(_zsh_escape(c.name) + ':' + c.summary)}"
                          for c in commands)
    dispatch = "\n".join(f"        {c.name}) {_zsh_function(c)} && ret=0 ;;"
                         for c in commands)
    top_specs = " \\\n    ".join([*_zsh_arguments(top), "'1:command:->command'",
                                   "'*::argument:->argument'"])
    parts.append(ZSH_MAIN.format(top=top_specs, described=described, dispatch=dispatch))
    return "\n".join(parts)


ZSH_HEADER = """#compdef sockferry
# Zsh completion for sockferry (`sockferry completion zsh`, from its parsers).
# Install it as _sockferry in a directory on $fpath (before compinit runs), or source it.
"""

ZSH_MAIN = r"""_sockferry() {{
  local curcontext=$curcontext state state_descr line ret=1
  typeset -A opt_args
  _arguments -C -s \
    {top} && ret=0
  case $state in
    command)
      local -a commands=(
{described}
      )
      _describe -t commands 'sockferry command' commands && ret=0 ;;
    argument)
      curcontext=${{curcontext%:*:*}}:sockferry-$words[1]:
      case $words[1] in
{dispatch}
      esac ;;
  esac
  return ret
}}

# Autoloaded from $fpath: complete now; sourced: register.
if [[ $zsh_eval_context[-1] == loadautofunc ]]; then
  _sockferry "$@"
else
  compdef _sockferry sockferry
fi
"""


# ---- fish -------------------------------------------------------------------------------


def _fish_quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _fish_names(names: Iterable[str]) -> str:
    flags = []
    for name in names:
        if name.startswith("--"):
            flags.append(f"-l {_fish_quote(name[2:])}")
        elif len(name) == 2:
            flags.append(f"-s {_fish_quote(name[1:])}")
        else:
            flags.append(f"-o {_fish_quote(name[1:])}")
    return " ".join(flags)


def _fish_values(values: Values) -> str:
    if values.choices:
        return "-x -a " + _fish_quote(" ".join(values.choices))
    if values.files:
        return "-r -F"
    if values.directories:
        return "-x -a '(__fish_complete_directories (commandline -ct))'"
    return "-x"


def fish(top: Command, commands: list[Command]) -> str:
    lines = [FISH_HEADER]
    value_options = [f"'{c.name} {n}'" for c in [top, *commands] for o in c.options
                     if o.values is not None for n in o.names]
    lines.append(FISH_HELPERS.format(value_options=" ".join(value_options)))
    lines.append("complete -c sockferry -f  # no file names unless a rule below says so")
    for command in [top, *commands]:
        condition = (f"__sockferry_at {_fish_quote(command.name)}" if command.name
                     else "__sockferry_at ''")
        for option in command.options:
            rule = (f"complete -c sockferry -n {_fish_quote(condition)} "
                    f"{_fish_names(option.names)}")
            if option.values is not None:
                rule += " " + _fish_values(option.values)
            lines.append(f"{rule} -d {_fish_quote(option.description)}")
        if not command.name:
            lines += [f"complete -c sockferry -n {_fish_quote(condition)} -a "
                      f"{_fish_quote(c.name)} -d {_fish_quote(c.summary)}" for c in commands]
            continue
        for i, values in enumerate(command.positionals):
            if values.kind != "none":
                at = f"__sockferry_at {command.name} {i}"
                lines.append(f"complete -c sockferry -n {_fish_quote(at)} "
                             f"{_fish_values(values)}")
        if command.rest is not None and command.rest.kind != "none":
            at = f"__sockferry_at {command.name} {len(command.positionals)}+"
            lines.append(f"complete -c sockferry -n {_fish_quote(at)} "
                         f"{_fish_values(command.rest)}")
    return "\n".join(lines) + "\n"


FISH_HEADER = """# Fish completion for sockferry (`sockferry completion fish`, from its parsers).
# Install it as ~/.config/fish/completions/sockferry.fish.
"""

FISH_HELPERS = r"""# The command (empty before one), and how many of its arguments come before the
# cursor; an option's value is no argument.
function __sockferry_state
    set -l tokens (commandline -opc)
    set -e tokens[1]
    set -l command ''
    set -l position 0
    set -l expect 0
    set -l ended 0
    for token in $tokens
        if test $expect = 1
            set expect 0
        else if test $ended = 0; and string match -q -- '-*' $token
            if test $token = --
                set ended 1
            else if contains -- "$command $token" {value_options}
                set expect 1
            end
        else if test -z "$command"
            set command $token
        else
            set position (math $position + 1)
        end
    end
    echo $command
    echo $position
end

# __sockferry_at COMMAND [N | N+]: true in COMMAND ("" before one), at its N-th argument
# or at any from the N-th on.
function __sockferry_at
    set -l state (__sockferry_state)
    test "$state[1]" = "$argv[1]"; or return 1
    set -q argv[2]; or return 0
    if string match -q -- '*+' $argv[2]
        test $state[2] -ge (string trim -r -c + -- $argv[2])
    else
        test $state[2] -eq $argv[2]
    end
end
"""
