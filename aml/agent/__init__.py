"""What agent processes import (DESIGN.md, Layout): the enqueue client today; the tracer, monitor,
profiler and sessions as they land. Modules here import Celery or the catalog only when asked to."""
