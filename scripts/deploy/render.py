#!/usr/bin/env python3
"""Fill in a deploy template: every {{NAME}} is replaced by the value given as NAME=VALUE.

Why a template and a renderer rather than files to edit by hand: the test suite renders
the very same files with test values (ports, paths, a throwaway certificate) and runs
them (nginx) or verifies them (systemd-analyze), so what ships is what was tested. The
renderer refuses a placeholder left without a value and a value that matches no
placeholder, so a typo fails here and not in production.

    python3 scripts/deploy/render.py scripts/deploy/nginx/team-relay.conf \\
        SERVER_NAME=relay.example.com TLS_CERT=/etc/ssl/... > /etc/nginx/sites-available/team-relay

A bare NAME (no "=") takes its value from the environment variable NAME: secrets such as
OPENAI_API_KEY then never appear on a command line (shell history, `ps`).

Standard library only: it runs on a fresh host before the virtualenv exists.
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

PLACEHOLDER = re.compile(r"\{\{([A-Z][A-Z0-9_]*)\}\}")


class RenderError(ValueError):
    pass


def placeholders(text: str) -> set[str]:
    return set(PLACEHOLDER.findall(text))


def render(text: str, values: dict[str, str]) -> str:
    wanted = placeholders(text)
    missing = sorted(wanted - values.keys())
    unknown = sorted(values.keys() - wanted)
    if missing:
        raise RenderError(f"no value for {', '.join(missing)}")
    if unknown:
        raise RenderError(f"no placeholder {', '.join(unknown)} in the template")
    return PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), text)


def render_file(path: str | Path, values: dict[str, str]) -> str:
    return render(Path(path).read_text(), values)


def render_all(templates: list[Path], values: dict[str, str]) -> dict[Path, str]:
    """Several templates with one set of values: each value must fill a placeholder in at
    least one of them, and each template must get all of its own."""
    wanted = set().union(*(placeholders(Path(t).read_text()) for t in templates))
    unknown = sorted(values.keys() - wanted)
    if unknown:
        raise RenderError(f"no placeholder {', '.join(unknown)} in any template")
    out = {}
    for template in templates:
        text = Path(template).read_text()
        mine = placeholders(text)
        out[Path(template)] = render(text, {k: v for k, v in values.items() if k in mine})
    return out


USAGE = """usage: render.py TEMPLATE [NAME=VALUE | NAME]...            (to standard output)
       render.py -o DIRECTORY TEMPLATE... [NAME=VALUE | NAME]... (each to DIRECTORY/its name)"""


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip() + "\n\n" + USAGE)
        return 0 if argv else 2
    out_dir = None
    if argv[0] == "-o":
        if len(argv) < 3:
            print(USAGE, file=sys.stderr)
            return 2
        out_dir, argv = Path(argv[1]), argv[2:]
    templates = [a for a in argv if "=" not in a and Path(a).is_file()]
    values = {}
    for pair in argv:
        if pair in templates:
            continue
        name, sep, value = pair.partition("=")
        if not sep:
            if name not in os.environ:
                print(f"render: {name} is neither a template, NAME=VALUE, nor set in the environment",
                      file=sys.stderr)
                return 2
            value = os.environ[name]
        values[name] = value
    if not templates or (out_dir is None and len(templates) > 1):
        print(USAGE, file=sys.stderr)
        return 2
    try:
        rendered = render_all(templates, values)
    except RenderError as exc:
        print(f"render: {exc}", file=sys.stderr)
        return 2
    for template, text in rendered.items():
        if out_dir is None:
            sys.stdout.write(text)
        else:
            (out_dir / template.name).write_text(text)
            print(f"render: wrote {out_dir / template.name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
