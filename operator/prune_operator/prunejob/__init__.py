"""The PruneJob controller: handlers.py (Kopf, API calls) over status.py (phase and conditions, pure)
and builders.py (the children's manifests, pure)."""
