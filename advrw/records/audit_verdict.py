"""The audit verdict of one results.json as text (W&B summary, console); the report's column is `report.table.audit_cell`.

``results.json``'s ``audit`` block is written by ``advrw.evaluation.audit``; this reader sits in
``records`` so the report (which must not import ``evaluation``) can show it.
"""

from __future__ import annotations


def verdict_text(results: dict) -> str:
    """``reliable``, ``flagged: <failed checks>``, or '' when no audit ran (best/last: last's)."""
    a = results.get("audit")
    if not a:
        return ""
    return a["verdict"] if not a["reasons"] else f"{a['verdict']}: {', '.join(a['reasons'])}"
