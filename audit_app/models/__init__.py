"""The audit models, one module per kind of record."""
from .admin_actions import AdminAction
from .batches import BatchRecord, BatchResult, BatchStatus
from .calls import ApiCall, Billing, Outcome
from .jobs import AsyncJob, JobKind
from .files import FileOrigin, FileRecord, UploadRecord
from .ledger import ChainState, LedgerEntry, LedgerKind, PruneRun
from .reconciliation import Match, ReconciledCost, ReconciledDay, ReconciledUsage, ReconcileRun
from .stats import BudgetAlert, CallStatsDaily, StatusClass
from .usage import BudgetHold, ModelPrice, UsageDaily

__all__ = [
    "AdminAction", "BudgetHold",
    "ApiCall", "Billing", "Outcome", "ModelPrice", "UsageDaily", "FileRecord", "FileOrigin", "UploadRecord",
    "AsyncJob", "JobKind", "BatchRecord", "BatchResult", "Match", "ReconciledCost", "ReconciledDay", "ReconciledUsage",
    "ReconcileRun", "BatchStatus", "ChainState", "LedgerEntry", "LedgerKind", "PruneRun",
    "BudgetAlert", "CallStatsDaily", "StatusClass",
]
