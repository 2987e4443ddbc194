"""Helpers both apps use, so that neither has to import the other for them.

The layers, bottom up (docs/module-map.md): this package; the keys and users
(`proxy_app.models`); the audit trail (`audit_app`); the relay (the rest of
`proxy_app`). tests/test_module_map.py holds every import to that direction.
"""
