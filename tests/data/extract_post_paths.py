"""Refresh openai_post_paths.json from OpenAI's official spec.

    python tests/data/extract_post_paths.py PATH/TO/openai-openapi.json

Every POST operation's path, with `{id}` placeholders, under /v1. The tests never
read the spec itself: they read this list, so that an endpoint OpenAI adds shows up
as a diff, and tests/test_accounting.py makes someone decide whether it is billed.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

OUT = Path(__file__).with_name("openai_post_paths.json")


def extract(spec: dict) -> list[str]:
    # The spec lists a few beta variants as "/responses?beta=true": the same paths.
    paths = {"/v1" + path.split("?", 1)[0] for path, item in spec["paths"].items() if "post" in item}
    return sorted(paths)


if __name__ == "__main__":
    spec = json.loads(Path(sys.argv[1]).read_text())
    OUT.write_text(json.dumps(extract(spec), indent=1) + "\n")
    print(f"{OUT}: {len(extract(spec))} POST paths")
