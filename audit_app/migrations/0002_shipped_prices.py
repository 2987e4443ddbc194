"""Ship the initial price list (built from LiteLLM's public price map)."""
from datetime import datetime, timezone

from django.db import migrations

EFFECTIVE_FROM = datetime(2024, 1, 1, tzinfo=timezone.utc)


def load(apps, schema_editor):
    from audit_app.pricing import SHIPPED_PRICES, import_map, load_map

    ModelPrice = apps.get_model("audit_app", "ModelPrice")
    import_map(ModelPrice, load_map(SHIPPED_PRICES), EFFECTIVE_FROM, "shipped: litellm 1.109.1")


def unload(apps, schema_editor):
    apps.get_model("audit_app", "ModelPrice").objects.filter(source__startswith="shipped:").delete()


class Migration(migrations.Migration):
    dependencies = [("audit_app", "0001_initial")]
    operations = [migrations.RunPython(load, unload)]
