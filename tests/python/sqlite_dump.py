"""Print every row of a SQLite database as SQL, as a copy of the file would hold it.

Usage: sqlite_dump.py DB_FILE
"""

import sqlite3
import sys

db = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True, timeout=10)
for line in db.iterdump():
    print(line)
db.close()
