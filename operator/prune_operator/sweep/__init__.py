"""The PruneSweep controller: handlers.py (thin) over plan.py (pure)."""
