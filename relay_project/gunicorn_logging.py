"""gunicorn's access log without secrets: a key someone put in the URL
(`?api_key=tr-…`) is refused by the relay, but gunicorn logs the request line
before the relay has a say, so the line is scrubbed here."""
from __future__ import annotations

from gunicorn.glogging import Logger

from relay_project.redact import scrub_keys


class ScrubbingLogger(Logger):
    def atoms(self, resp, req, environ, request_time):
        atoms = super().atoms(resp, req, environ, request_time)
        for name in ("r", "q", "U", "f"):
            if isinstance(atoms.get(name), str):
                atoms[name] = scrub_keys(atoms[name])
        return atoms
