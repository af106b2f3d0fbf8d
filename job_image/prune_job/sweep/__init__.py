"""PruneSweep without Kubernetes: the grid (grid.py: combinations, skipped
contradictions, child names and outputs), the choice (select.py), the report
(report.py) and the local runner (local.py, `prune-job sweep`). grid and
select import no torch: the controller plans with them too."""
