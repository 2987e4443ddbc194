#!/usr/bin/env python3
"""Fill in a deploy template: every {{NAME}} is replaced by the value given as NAME=VALUE.

Why a template and a renderer rather than files to edit by hand: the test suite renders
the very same files with test values (ports, paths, a throwaway certificate) and runs
them (nginx) or verifies them (systemd-analyze), so what ships is what was tested. The
renderer refuses a placeholder left without a value and a value that matches no
placeholder, so a typo fails here and not in production.

    python3 scripts/deploy/render.py scripts/deploy/nginx/team-relay.conf \\
        SERVER_NAME=relay.example.com TLS_CERT=/etc/ssl/... > /etc/nginx/sites-available/team-relay

Standard library only: it runs on a fresh host before the virtualenv exists.
"""
from __future__ import annotations

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


def main(argv: list[str]) -> int:
    if len(argv) < 1 or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    template, pairs = argv[0], argv[1:]
    values = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            print(f"render: expected NAME=VALUE, got {pair!r}", file=sys.stderr)
            return 2
        values[name] = value
    try:
        sys.stdout.write(render_file(template, values))
    except RenderError as exc:
        print(f"render: {template}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
