"""aml engine: stores and formats, backup repository, prune policies, migrations, tracer, health.

This package imports nothing of the project outside ``aml`` (no Celery, no catalog); see DESIGN.md, Layout.
"""

__version__ = "0.1.0"
