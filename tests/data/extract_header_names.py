"""Refresh the "spec" part of openai_header_names.json from OpenAI's official spec.

    python tests/data/extract_header_names.py PATH/TO/openai-openapi.json [VERSION-FILE]

The tests never read the spec itself: they read the vendored list this writes,
so that a header OpenAI starts to name shows up as a diff to review, and the
allowlists in proxy_app/headers.py change only on purpose. The "docs", "sdks"
and "standards" sections are kept by hand and left as they are.

What counts as a header name in the spec: `in: header` parameters, the names
of responses' `headers` objects, and the `-H "Name: value"` options of the
curl examples.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

OUT = Path(__file__).with_name("openai_header_names.json")
_CURL_HEADER = re.compile(r"""-H\s+["']([A-Za-z0-9-]+)\s*:""")


def extract(spec: dict) -> dict[str, list[str]]:
    request: set[str] = set()
    response: set[str] = set()
    components = spec.get("components", {})

    def resolve(obj: dict, kind: str) -> dict:
        ref = obj.get("$ref", "")
        return components.get(kind, {}).get(ref.rsplit("/", 1)[-1], {}) if ref else obj

    def strings(obj):
        if isinstance(obj, dict):
            for value in obj.values():
                yield from strings(value)
        elif isinstance(obj, list):
            for value in obj:
                yield from strings(value)
        elif isinstance(obj, str):
            yield obj

    for item in spec.get("paths", {}).values():
        operations = [op for method, op in item.items() if isinstance(op, dict) and method != "parameters"]
        for params in [item.get("parameters", [])] + [op.get("parameters", []) for op in operations]:
            for param in params:
                param = resolve(param, "parameters")
                if param.get("in") == "header":
                    request.add(param["name"].lower())
        for op in operations:
            for answer in op.get("responses", {}).values():
                response.update(name.lower() for name in resolve(answer, "responses").get("headers", {}))
    for text in strings(spec):
        request.update(name.lower() for name in _CURL_HEADER.findall(text))
    return {"request": sorted(request), "response": sorted(response)}


def main() -> None:
    spec_path = Path(sys.argv[1])
    data = json.loads(OUT.read_text()) if OUT.exists() else {}
    data["spec"] = extract(json.loads(spec_path.read_text()))
    if len(sys.argv) > 2:
        data["spec_version"] = Path(sys.argv[2]).read_text().strip()
    OUT.write_text(json.dumps(data, indent=2) + "\n")
    print(f"{OUT}: {len(data['spec']['request'])} request and {len(data['spec']['response'])} response names")


if __name__ == "__main__":
    main()
