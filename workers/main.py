"""The entry module: ``celery -A workers.main worker|beat|flower`` (``aml worker|beat|flower`` use it).

The only module that creates a Celery app at import; it is configured from ``AML_*`` variables.
"""

from __future__ import annotations

from workers.app import create_app

app = create_app(set_as_current=True)
"""The aml application of this process."""
