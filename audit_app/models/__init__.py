"""The audit models, one module per kind of record."""
from .admin_actions import AdminAction
from .batches import BatchRecord, BatchResult, BatchStatus
from .calls import ApiCall, Billing, Outcome
from .files import FileOrigin, FileRecord, UploadRecord
from .ledger import ChainState, LedgerEntry, LedgerKind, PruneRun
from .usage import BudgetHold, ModelPrice, UsageDaily

__all__ = [
    "AdminAction", "BudgetHold",
    "ApiCall", "Billing", "Outcome", "ModelPrice", "UsageDaily", "FileRecord", "FileOrigin", "UploadRecord",
    "BatchRecord", "BatchResult", "BatchStatus", "ChainState", "LedgerEntry", "LedgerKind", "PruneRun",
]
