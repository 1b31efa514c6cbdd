"""Cadre's processes and their edges: settings, API, worker, queue, store, CLI, local stack."""
