"""The hazards bluegreen knows, named as squawk names them (https://squawkhq.com/docs/rules).

Each rule says what the statement does to a live table and whether ``mode: lock-safe`` can rewrite
it. A rule that cannot be rewritten is refused in lock-safe mode unless the plan lists it in
``allow``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Rule:
    """A named hazard: its message, whether lock-safe mode rewrites it, and the safe form."""

    name: str
    message: str
    rewritable: bool
    help: str


_RULES = [
    Rule("require-concurrent-index-creation",
         "CREATE INDEX takes a SHARE lock: writes to the table block while the index builds", True,
         "CREATE INDEX CONCURRENTLY, outside a transaction"),
    Rule("require-concurrent-index-deletion",
         "DROP INDEX takes an ACCESS EXCLUSIVE lock on the table: reads and writes block", True,
         "DROP INDEX CONCURRENTLY, outside a transaction"),
    Rule("require-concurrent-reindex",
         "REINDEX locks out writes (and reads through the index) while it rebuilds", True,
         "REINDEX ... CONCURRENTLY, outside a transaction"),
    Rule("constraint-missing-not-valid",
         "adding a constraint scans the whole table while holding a lock that blocks writes", True,
         "ADD ... NOT VALID, then VALIDATE CONSTRAINT in its own transaction (unique: an index built concurrently)"),
    Rule("adding-foreign-key-constraint",
         "ADD FOREIGN KEY takes SHARE ROW EXCLUSIVE on both tables and scans the table: writes block", True,
         "ADD FOREIGN KEY ... NOT VALID, then VALIDATE CONSTRAINT in its own transaction"),
    Rule("disallowed-unique-constraint",
         "ADD UNIQUE builds its index under an ACCESS EXCLUSIVE lock: reads and writes block", True,
         "CREATE UNIQUE INDEX CONCURRENTLY, then ADD CONSTRAINT ... UNIQUE USING INDEX"),
    Rule("adding-serial-primary-key-field",
         "ADD PRIMARY KEY builds its index under an ACCESS EXCLUSIVE lock: reads and writes block", True,
         "CREATE UNIQUE INDEX CONCURRENTLY, then ADD CONSTRAINT ... PRIMARY KEY USING INDEX"),
    Rule("adding-not-nullable-field",
         "SET NOT NULL scans the whole table under an ACCESS EXCLUSIVE lock: reads and writes block", True,
         "CHECK (col IS NOT NULL) NOT VALID, VALIDATE, SET NOT NULL (no scan), drop the check"),
    Rule("adding-field-with-default",
         "a column added with a volatile default (or serial, identity, generated) rewrites the table "
         "under an ACCESS EXCLUSIVE lock", False,
         "add the column without a default, set the default, backfill in batches"),
    Rule("adding-required-field",
         "a NOT NULL column with no default fails on a table that has rows", False,
         "add the column nullable (or with a constant default), backfill, then SET NOT NULL"),
    Rule("changing-column-type",
         "changing a column's type rewrites the table (and its indexes) under an ACCESS EXCLUSIVE lock", False,
         "add a new column, backfill it in batches, switch readers, drop the old one"),
    Rule("ban-drop-column",
         "dropping a column breaks every client still reading it (SELECT * included)", False,
         "stop reading the column first; drop it in a later release"),
    Rule("renaming-column",
         "renaming a column breaks every client still using the old name", False,
         "add the new column, write both, switch readers, drop the old one"),
    Rule("renaming-table",
         "renaming a table breaks every client still using the old name", False,
         "create a view with the old name while clients move"),
    Rule("ban-drop-table",
         "dropping a table breaks every client still using it", False,
         "stop using the table first; drop it in a later release"),
    Rule("prefer-robust-stmts",
         "a statement that runs outside a transaction must be safe to run again after an interruption", True,
         "add IF NOT EXISTS / IF EXISTS"),
]

RULES: dict[str, Rule] = {rule.name: rule for rule in _RULES}
"""Every rule bluegreen reports, by squawk name."""

REWRITTEN_RULES = frozenset(rule.name for rule in _RULES if rule.rewritable)
"""The rules ``mode: lock-safe`` and ``bluegreen rewrite`` fix."""
