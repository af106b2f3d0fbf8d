"""The PruneSchedule controller: handlers.py (Kopf, API calls) over plan.py (the CronJob rules, pure)."""
