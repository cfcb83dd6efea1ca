"""Schema migrations of Loom AML stores: 1.0.0 <-> 1.1.0 <-> 1.2.0 <-> 2.0.0, both ways, nothing lost.

One concern per module:

* :mod:`~aml.migrate.versions` - the versions and the path between two of them;
* :mod:`~aml.migrate.steps` - the rules of each step for one item (the schema definition), and where
  aml differs from Loom's own migration;
* :mod:`~aml.migrate.legacy` - what an upgrade drops, kept under ``metadata.aml_legacy``;
* :mod:`~aml.migrate.chain` - one item through the steps; the loss check of downgrades;
* :mod:`~aml.migrate.files` - the files in scope; reading them; writing them in their own layout and
  encoding (through :mod:`aml.store.rewrite`, like every writer);
* :mod:`~aml.migrate.detect` - ``migrate detect``;
* :mod:`~aml.migrate.plan` - what a migration would do (``--dry-run``);
* :mod:`~aml.migrate.journal` - resume or roll back after a kill;
* :mod:`~aml.migrate.apply` - :func:`migrate`, :func:`apply_plan`, :func:`rollback`;
* :mod:`~aml.migrate.compare` - record equality as the oracle tests use it.

Where Loom's own migration (``scripts/aml/migration.py``, ``MigrationManager``) loses data, and aml
does not (the real stores in ``shared/data/loom`` are the oracle for everything else):

* it reads files by name, so gzip bytes under a ``.json`` name fail to parse, ``_load_json`` returns
  ``[]`` and the step saves ``[]`` over the file, and reports success: every record of a compressed
  store is destroyed. aml sniffs the encoding and writes gzip back as gzip; a file it cannot parse
  is reported (path, byte offset, reason), left untouched, and fails the run;
* its 1.2.0 -> 2.0.0 pattern rebuild drops ``variations``, fields it does not know and extra
  ``metrics``/``evolution`` entries, and invents defaults for missing ones; aml keeps unknown fields
  in place and everything else under ``metadata.aml_legacy`` (:mod:`~aml.migrate.legacy`);
* it has no downgrade; aml goes down step by step and refuses a downgrade that would lose data
  unless forced (:mod:`~aml.migrate.chain`);
* it detects the version from ``schema_version.json`` or the first pattern of whichever agent
  directory is listed first; aml reads every item (:mod:`~aml.migrate.detect`);
* it writes files in place (``open(path, "w")``): a crash leaves a torn file; aml writes atomically
  under a journal (:mod:`~aml.migrate.journal`).

Like Loom, aml leaves ``global/archived-decisions.json`` and ``backup/`` reset copies alone.

Pure engine: no Celery, no catalog (``tasks/migrate.py`` adds the safety snapshot and the run record).
"""

from aml.migrate.apply import MigrationResult, RollbackResult, apply_plan, migrate, new_run_id, rollback
from aml.migrate.chain import ItemResult, UnknownItemVersion, item_version, lost_paths, migrate_item
from aml.migrate.compare import differences, equivalent
from aml.migrate.detect import Detection, detect
from aml.migrate.journal import JOURNAL_FILE, Journal, JournalError
from aml.migrate.plan import FilePlan, Plan, build_plan
from aml.migrate.steps import KIND_OF_COLLECTION, ItemKind, StepContext
from aml.migrate.versions import LATEST, VERSIONS, check_version

__all__ = [
    "JOURNAL_FILE",
    "KIND_OF_COLLECTION",
    "LATEST",
    "VERSIONS",
    "Detection",
    "FilePlan",
    "ItemKind",
    "ItemResult",
    "Journal",
    "JournalError",
    "MigrationResult",
    "Plan",
    "RollbackResult",
    "StepContext",
    "UnknownItemVersion",
    "apply_plan",
    "build_plan",
    "check_version",
    "detect",
    "differences",
    "equivalent",
    "item_version",
    "lost_paths",
    "migrate",
    "migrate_item",
    "new_run_id",
    "rollback",
]
