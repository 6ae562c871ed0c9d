"""Run SQL statements against a SQLite database, as an intruder with file access would.

Usage: sqlite_exec.py DB_FILE STATEMENT...  (all in one transaction)
"""

import sqlite3
import sys

db = sqlite3.connect(sys.argv[1], timeout=10)
with db:
    for statement in sys.argv[2:]:
        db.execute(statement)
db.close()
