"""Dependencies go one way (docs/module-map.md): shared helpers, then keys and users,
then the audit trail, then the relay. Every import, including those inside functions."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
KEYS = {"proxy_app.models", "proxy_app.key_cache"}  # the keys-and-users layer of proxy_app


def imports_of(path: Path) -> set[str]:
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            # `from . import x` names modules; `from .m import x` names a module's contents.
            found.update(f"{module}.{a.name}" for a in node.names) if node.module is None \
                else found.add(module)
    return found


def modules(*globs: str) -> list[Path]:
    return sorted(p for g in globs for p in ROOT.glob(g) if "migrations" not in p.parts)


def app_imports(path: Path, app: str) -> set[str]:
    return {m for m in imports_of(path) if m == app or m.startswith(app + ".")}


@pytest.mark.parametrize("path", modules("relay_project/lib/**/*.py"), ids=str)
def test_shared_helpers_import_neither_app(path):
    assert not app_imports(path, "proxy_app") | app_imports(path, "audit_app")


@pytest.mark.parametrize("path", [ROOT / "proxy_app/models.py", ROOT / "proxy_app/key_cache.py"], ids=str)
def test_keys_and_users_import_nothing_above_them(path):
    assert not app_imports(path, "audit_app")
    assert app_imports(path, "proxy_app") <= KEYS


@pytest.mark.parametrize("path", modules("audit_app/**/*.py"), ids=str)
def test_the_audit_trail_uses_only_the_keys_from_the_relay_app(path):
    assert app_imports(path, "proxy_app") <= KEYS, "audit_app may import proxy_app.models, nothing else"


def test_the_checker_sees_imports_inside_functions():
    path = ROOT / "audit_app/recorder.py"
    assert "audit_app.operations" in imports_of(path)


def documented_modules() -> set[str]:
    """Every module docs/module-map.md names in its tables, as paths."""
    import re

    text = (ROOT / "docs/module-map.md").read_text()
    found, prefix = set(), ""
    for line in text.splitlines():
        if line.startswith("## "):
            prefix = {"0": "relay_project/", "1": "", "2": "audit_app/", "3": "proxy_app/"}[line[3]]
        if line.startswith("| `"):
            for name in re.findall(r"`([\w/]+\.py|[\w/]+/)`", line.split("|")[1]):
                found.add(prefix + name)
    return found


def test_the_module_map_names_every_module_and_only_existing_ones():
    documented = documented_modules()
    code = {str(p.relative_to(ROOT)) for p in modules("proxy_app/*.py", "audit_app/*.py", "relay_project/lib/*.py")
            if p.name not in ("__init__.py", "apps.py")}
    folders = {d for d in documented if d.endswith("/")}
    assert code - documented == set(), "modules missing from docs/module-map.md"
    assert {d for d in documented - folders if not (ROOT / d).exists()} == set(), "documented but gone"
    assert all((ROOT / d).is_dir() for d in folders)


@pytest.mark.django_db
def test_every_model_change_has_its_migration():
    # A model edit without its migration passes the suite (the test database is built from
    # the models' migrations as they are) but leaves `migrate` on a deployed relay one step
    # behind what the code expects.
    from django.core.management import call_command
    call_command("makemigrations", "--check", "--dry-run", verbosity=0)
