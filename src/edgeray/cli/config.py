"""``--config FILE``: a command's options from a TOML or YAML file, the command line overriding the file.

Keys are the command's long flags without their dashes (``max-batch = 64``; ``max_batch`` is the same key); a table
prefixes its keys (``[refine]`` then ``engine = "rpie"`` is ``refine-engine``), and a table named for an on/off flag
turns it on (``[refine]`` is ``refine = true``; ``on = false`` in it turns it off). Values are checked as the command
line would check them (type, choices), and a key the command does not have is refused by name, with the nearest
known keys. ``--print-config`` writes the options in effect as TOML: a start for a file of one's own.
"""

from __future__ import annotations

import argparse
import difflib
import tomllib
from pathlib import Path

NOT_IN_FILES = {"help", "config", "print_config"}
TABLE = object()  # a table's own name in the flattened keys: turns on the on/off flag of that name, if there is one


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """Give ``parser`` (one command) ``--config FILE`` and ``--print-config``."""
    parser.add_argument("--config", type=Path, default=None, metavar="FILE",
                        help="TOML or YAML file of this command's options (keys: the flags without dashes, e.g. "
                        "max-batch = 64); flags given on the command line win")  # fmt: skip
    parser.add_argument("--print-config", action="store_true",
                        help="print the options in effect (file and flags) as TOML, and exit")  # fmt: skip
    parser.set_defaults(config_parser=parser)


def read_config(path: Path) -> dict:
    """The file's keys, tables flattened (``[refine] engine`` -> ``refine-engine``), underscores as dashes."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such config file")
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            values = yaml.safe_load(text) or {}
        except yaml.YAMLError as error:
            raise ValueError(f"{path}: not valid YAML: {error}") from None
    else:
        try:
            values = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise ValueError(f"{path}: not valid TOML: {error}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a config file holds keys and values (a table), not {type(values).__name__}")
    return _flattened(values)


def _flattened(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        name = prefix + str(key).replace("_", "-")
        if isinstance(value, dict):
            flat.setdefault(name, TABLE)
            flat.update(_flattened(value, name + "-"))
        else:
            flat[name] = value
    return flat


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The command's long flags (without dashes) -> their actions, the ones files may not set left out."""
    found = {}
    for action in parser._actions:
        if action.dest in NOT_IN_FILES or not action.option_strings:
            continue
        for flag in action.option_strings:
            if flag.startswith("--"):
                found.setdefault(flag[2:], action)
    return found


def config_defaults(parser: argparse.ArgumentParser, values: dict, path: Path) -> dict:
    """``values`` (from :func:`read_config`) checked against ``parser``'s flags -> ``{dest: value}``.

    Raises:
        ValueError: naming the file and key, for a key the command does not have (with the nearest ones), a
            positional argument, a value of the wrong type or outside the flag's choices.
    """
    options = _options(parser)
    positionals = {a.dest for a in parser._actions if not a.option_strings}
    checked = {}
    for key, value in values.items():
        switch = options.get(key.removesuffix("-on"))
        if key.endswith("-on") and isinstance(switch, argparse._StoreTrueAction):
            key = key.removesuffix("-on")  # [refine] on = false
        if value is TABLE:
            if isinstance(options.get(key), argparse._StoreTrueAction):
                checked[options[key].dest] = True
            continue
        if key.replace("-", "_") in positionals:
            raise ValueError(f"{path}: {key}: a positional argument; give it on the command line")
        action = options.get(key)
        if action is None:
            near = difflib.get_close_matches(key, options, n=3, cutoff=0.6)
            hint = f"did you mean {', '.join(near)}?" if near else f"the command's keys: {', '.join(sorted(options))}"
            raise ValueError(f"{path}: unknown key {key!r} for `{parser.prog}`; {hint}")
        checked[action.dest] = _value(action, value, f"{path}: {key}")
        action.required = False  # a required flag the file gives
    return checked


def _value(action: argparse.Action, value: object, where: str):
    """``value`` as the flag's ``type`` makes it (a string is converted as on the command line)."""
    if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
        if not isinstance(value, bool):
            raise ValueError(f"{where}: true or false, not {value!r}")
        return value if isinstance(action, argparse._StoreTrueAction) else not value
    if isinstance(value, bool | list | dict) or value is None:
        raise ValueError(f"{where}: a single value (number or string), not {value!r}")
    kind = action.type
    if kind in (int, float) and not isinstance(value, str):
        if kind is int and not (isinstance(value, int) or float(value).is_integer()):
            raise ValueError(f"{where}: a whole number, not {value!r}")
        converted = kind(value)
    else:
        try:
            converted = kind(str(value)) if kind is not None else str(value)
        except (TypeError, ValueError, argparse.ArgumentTypeError) as error:
            raise ValueError(f"{where}: {value!r} is not valid ({error})") from None
    if action.choices is not None and converted not in action.choices:
        raise ValueError(f"{where}: {converted!r} is not one of {', '.join(map(str, action.choices))}")
    return converted


def apply_config(parser: argparse.ArgumentParser, args: argparse.Namespace, argv) -> argparse.Namespace:
    """The command line parsed again with the ``--config`` file's values as the command's defaults (the flags given
    still win). Without ``--config``, ``args`` as they are."""
    command = getattr(args, "config_parser", None)
    if command is None or args.config is None:
        return args
    command.set_defaults(**config_defaults(command, read_config(args.config), args.config))
    return parser.parse_args(argv)


def config_text(args: argparse.Namespace) -> str:
    """The options in effect as TOML, one ``key = value`` per flag (unset ones commented out)."""
    lines, written = [f"# {args.config_parser.prog}: options in effect"], set()
    for key, action in _options(args.config_parser).items():
        if id(action) in written:
            continue  # an alias: written once, under the first name
        written.add(id(action))
        value = getattr(args, action.dest, None)
        if isinstance(action, argparse._StoreFalseAction):
            value = not value
        if value is None:
            lines.append(f"# {key} =")
        elif isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, int | float):
            lines.append(f"{key} = {value!r}")
        else:
            escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
            lines.append(f'{key} = "{escaped}"')
    return "\n".join(lines) + "\n"
