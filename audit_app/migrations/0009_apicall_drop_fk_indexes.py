"""Drop the single-column indexes on ApiCall.key and ApiCall.user.

apicall_key_started and apicall_user_started lead with the same columns and
serve every lookup the single ones did (filters, PROTECT checks), while every
relayed call paid for writing two more index entries. Dropped by name rather
than through AlterField, which on SQLite would copy the whole call table.
"""
import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

_INDEXES = {"key_id": "audit_app_apicall_key_id_e00d6519", "user_id": "audit_app_apicall_user_id_01cb2913"}


class Migration(migrations.Migration):

    dependencies = [
        ('audit_app', '0008_batch_claims'),
        ('proxy_app', '0001_initial'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunSQL(f'DROP INDEX IF EXISTS "{name}"',
                                  reverse_sql=f'CREATE INDEX "{name}" ON "audit_app_apicall" ("{column}")')
                for column, name in _INDEXES.items()
            ],
            state_operations=[
                migrations.AlterField(
                    model_name='apicall',
                    name='key',
                    field=models.ForeignKey(blank=True, db_index=False, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='calls', to='proxy_app.relaykey'),
                ),
                migrations.AlterField(
                    model_name='apicall',
                    name='user',
                    field=models.ForeignKey(blank=True, db_index=False, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='api_calls', to=settings.AUTH_USER_MODEL),
                ),
            ],
        ),
    ]
