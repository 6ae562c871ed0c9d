"""Tamper with a SEKS audit log the way an intruder with file access would, keeping each
batch's index columns consistent with its edited lines (so only the hash chain can tell).

Usage: audit_tamper.py DB_FILE OP [ARGS]
  alter SEQ OLD NEW   replace OLD with NEW in record SEQ's JSON
  delete SEQ          remove record SEQ
  swap A B            swap the contents of records A and B, keeping their positions
  index SEQ           claim the batch holding SEQ starts later than it does (hides records
                      from time queries)
  forge SEQ           append to the newest batch a made-up record numbered SEQ
  rewrite AT_MS       set every record's time to AT_MS, recomputing every hash and index
  sql STATEMENT...    run SQL as is
"""

import hashlib
import json
import sqlite3
import sys

db = sqlite3.connect(sys.argv[1], timeout=10)
op, args = sys.argv[2], sys.argv[3:]


def batch_of(seq):
    row = db.execute(
        "SELECT tenant_id, first_seq, records, min_at_ms, max_at_ms FROM audit_batches "
        "WHERE first_seq <= ? AND last_seq >= ?",
        (seq, seq),
    ).fetchone()
    if row is None:
        sys.exit(f"no batch holds record {seq}")
    tenant, first, records, low, high = row
    return tenant, first, [line.split("\t", 3) for line in records.split("\n")], low, high


def save(tenant, first, lines, low, high):
    if not lines:
        db.execute("DELETE FROM audit_batches WHERE tenant_id = ? AND first_seq = ?", (tenant, first))
        return
    db.execute("DELETE FROM audit_batches WHERE tenant_id = ? AND first_seq = ?", (tenant, first))
    db.execute(
        "INSERT INTO audit_batches (tenant_id, first_seq, last_seq, min_at_ms, max_at_ms, last_hash, records) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (tenant, int(lines[0][0]), int(lines[-1][0]), low, high, lines[-1][2],
         "\n".join("\t".join(line) for line in lines)),
    )


with db:
    if op == "alter":
        seq, old, new = int(args[0]), args[1], args[2]
        tenant, first, lines, low, high = batch_of(seq)
        for line in lines:
            if int(line[0]) == seq:
                line[3] = line[3].replace(old, new)
        save(tenant, first, lines, low, high)
    elif op == "delete":
        seq = int(args[0])
        tenant, first, lines, low, high = batch_of(seq)
        save(tenant, first, [line for line in lines if int(line[0]) != seq], low, high)
    elif op == "swap":
        a, b = int(args[0]), int(args[1])
        ta, fa, la, lowa, higha = batch_of(a)
        tb, fb, lb, lowb, highb = batch_of(b)
        same = fa == fb
        if same:
            lb = la
        line_a = next(line for line in la if int(line[0]) == a)
        line_b = next(line for line in lb if int(line[0]) == b)
        line_a[1:], line_b[1:] = line_b[1:], line_a[1:]
        save(ta, fa, la, min(lowa, lowb), max(higha, highb))
        if not same:
            save(tb, fb, lb, min(lowa, lowb), max(higha, highb))
    elif op == "index":
        tenant, first, lines, low, high = batch_of(int(args[0]))
        save(tenant, first, lines, high + 1, high + 1)
    elif op == "forge":
        tenant, first, records = db.execute(
            "SELECT tenant_id, first_seq, records FROM audit_batches ORDER BY first_seq DESC LIMIT 1"
        ).fetchone()
        lines = [line.split("\t", 3) for line in records.split("\n")]
        fake = '{"at_ms":0,"tenant":"default","method":"GET","path":"/innocent","status":200}'
        lines.append([args[0], "0" * 64, "0" * 64, fake])
        low, high = db.execute(
            "SELECT min_at_ms, max_at_ms FROM audit_batches WHERE first_seq = ?", (first,)
        ).fetchone()
        # Keep the batch's last line and hash as they were, so only the lines changed.
        db.execute("DELETE FROM audit_batches WHERE tenant_id = ? AND first_seq = ?", (tenant, first))
        db.execute(
            "INSERT INTO audit_batches (tenant_id, first_seq, last_seq, min_at_ms, max_at_ms, last_hash, records) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (tenant, first, int(lines[-2][0]), 0, high, lines[-2][2],
             "\n".join("\t".join(line) for line in lines)),
        )
    elif op == "rewrite":
        at_ms = int(args[0])
        prev = {}
        batches = db.execute(
            "SELECT tenant_id, first_seq, records FROM audit_batches ORDER BY tenant_id, first_seq"
        ).fetchall()
        for tenant, first, records in batches:
            lines = [line.split("\t", 3) for line in records.split("\n")]
            for line in lines:
                record = json.loads(line[3])
                record["at_ms"] = at_ms
                line[3] = json.dumps(record, separators=(",", ":"))
                line[1] = prev.get(tenant, line[1])
                text = "\n".join([line[1], tenant, line[0], line[3]])
                line[2] = prev[tenant] = hashlib.sha256(text.encode()).hexdigest()
            save(tenant, first, lines, at_ms, at_ms)
    elif op == "sql":
        for statement in args:
            db.execute(statement)
    else:
        sys.exit(f"unknown operation {op}")
db.close()
