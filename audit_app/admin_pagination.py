"""A changelist paginator that never counts a big table to the end.

Django's changelist paginator runs COUNT(*) over the filtered queryset on every
page view: on millions of audit rows that alone takes seconds. This one counts
at most CAP + 1 rows (COUNT over a LIMIT subquery, which an index answers in
milliseconds) and says "more than CAP" past that.
"""
from __future__ import annotations

from django.core.paginator import Paginator
from django.utils.functional import cached_property

COUNT_CAP = 10_000


class CappedPaginator(Paginator):
    cap = COUNT_CAP

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.capped = False

    @cached_property
    def count(self) -> int:
        objects = self.object_list
        if hasattr(objects, "query"):
            # Ordering is irrelevant to a count and would make the database sort.
            n = objects.order_by()[: self.cap + 1].count()
        else:
            n = len(objects)
        self.capped = n > self.cap
        return min(n, self.cap)
