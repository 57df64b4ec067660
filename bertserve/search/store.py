"""SQLite store of a collection's items: user id, text, metadata and the vector itself.

The store is the source of truth. The Faiss index is a cache that can always be rebuilt from it, so
durability only has to be got right here: WAL journal with synchronous=FULL makes every committed
transaction survive a kill -9 or power loss once `commit` returns.
"""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np

from bertserve.errors import BadInput, Unavailable

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    iid  INTEGER PRIMARY KEY,      -- internal id: never reused, the label Faiss sees (or maps to)
    id   TEXT NOT NULL UNIQUE,     -- the user's id
    text TEXT,
    meta TEXT NOT NULL,            -- JSON object
    vec  BLOB NOT NULL             -- float32, dim values
);
-- Deleted internal ids the index file on disk may still hold; cleared once a saved index no longer does.
CREATE TABLE IF NOT EXISTS tombstones (iid INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

# SQLite's default limit on bound parameters is 32766; stay well under it.
CHUNK = 10_000


class Store:
    def __init__(self, path: Path, dim: int):
        self.dim = dim
        self.path = path
        # isolation_level=None: we issue BEGIN/COMMIT ourselves so a call is exactly one transaction.
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            # Reads go through the id index and never touch most table pages, so a damaged page would
            # only show (or not) as a wrong answer later: check every page once, here (one sequential read).
            problems = [r[0] for r in self.db.execute("PRAGMA quick_check(5)")]
            if problems != ["ok"]:
                raise sqlite3.DatabaseError("; ".join(problems))
            self.db.executescript(SCHEMA)
        except sqlite3.OperationalError:
            self.db.close()
            raise
        except sqlite3.DatabaseError as exc:  # SQLite's word for a damaged file
            self.db.close()
            raise Unavailable(f"{path} is damaged ({exc}); the collection cannot be opened. Restore the "
                              "folder from a backup, or drop it") from None

    def close(self):
        self.db.close()

    # ---- state -------------------------------------------------------------------------------------
    def state(self, key: str, default=None):
        row = self.db.execute("SELECT value FROM state WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def _set_state(self, key: str, value):
        self.db.execute("INSERT OR REPLACE INTO state(key, value) VALUES (?, ?)", (key, json.dumps(value)))

    def set_state(self, **values):
        with self.transaction():
            for key, value in values.items():
                self._set_state(key, value)

    def transaction(self):
        return _Transaction(self.db, self.path)

    # ---- writes ------------------------------------------------------------------------------------
    def existing(self, ids: list[str]) -> list[str]:
        found = []
        for chunk in _chunks(ids):
            q = f"SELECT id FROM items WHERE id IN ({','.join('?' * len(chunk))})"
            found += [r[0] for r in self.db.execute(q, chunk)]
        return found

    def add(self, ids, texts, metas, vectors: np.ndarray) -> np.ndarray:
        """Insert items under fresh internal ids, durably; returns those ids."""
        with self.transaction():
            start = self.state("next_iid", 0)
            iids = np.arange(start, start + len(ids), dtype=np.int64)
            rows = ((int(i), u, t, m, v.tobytes()) for i, u, t, m, v in zip(iids, ids, texts, metas, vectors))
            try:
                self.db.executemany("INSERT INTO items(iid, id, text, meta, vec) VALUES (?,?,?,?,?)", rows)
            except sqlite3.IntegrityError:
                dup = self.existing(list(ids))
                raise BadInput(f"ids already in the collection: {dup[:10]}") from None
            self._set_state("next_iid", start + len(ids))
        return iids

    def delete(self, ids: list[str]) -> np.ndarray:
        """Delete items by user id (missing ids are ignored); returns the internal ids removed."""
        with self.transaction():
            iids = self.iids_of(ids)
            for chunk in _chunks([int(i) for i in iids]):
                marks = ",".join("?" * len(chunk))
                self.db.execute(f"DELETE FROM items WHERE iid IN ({marks})", chunk)
                self.db.executemany("INSERT OR IGNORE INTO tombstones(iid) VALUES (?)", [(i,) for i in chunk])
        return iids

    def set_meta(self, ids: list[str], metas: list[str]):
        with self.transaction():
            self.db.executemany("UPDATE items SET meta=? WHERE id=?", list(zip(metas, ids)))

    def tombstones(self) -> np.ndarray:
        return np.array([r[0] for r in self.db.execute("SELECT iid FROM tombstones")], dtype=np.int64)

    def clear_tombstones(self, keep: np.ndarray):
        """Forget tombstones except `keep` (deleted ids still present, masked, in the saved index)."""
        self.db.execute("DELETE FROM tombstones")
        self.db.executemany("INSERT INTO tombstones(iid) VALUES (?)", [(int(i),) for i in keep])

    # ---- reads -------------------------------------------------------------------------------------
    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM items").fetchone()[0]

    def id_map(self) -> dict[int, str]:
        return dict(self.db.execute("SELECT iid, id FROM items"))

    def iids_of(self, ids: list[str]) -> np.ndarray:
        out = []
        for chunk in _chunks(list(ids)):
            q = f"SELECT iid FROM items WHERE id IN ({','.join('?' * len(chunk))})"
            out += [r[0] for r in self.db.execute(q, chunk)]
        return np.array(sorted(out), dtype=np.int64)

    def rows(self, iids, with_vectors=False) -> dict[int, tuple]:
        """iid -> (id, text, metadata dict[, vector]) for the given internal ids."""
        cols = "iid, id, text, meta" + (", vec" if with_vectors else "")
        out = {}
        for chunk in _chunks([int(i) for i in iids]):
            q = f"SELECT {cols} FROM items WHERE iid IN ({','.join('?' * len(chunk))})"
            for row in self.db.execute(q, chunk):
                rest = (row[1], row[2], json.loads(row[3]))
                if with_vectors:
                    rest += (np.frombuffer(row[4], dtype=np.float32),)
                out[row[0]] = rest
        return out

    def vectors(self, iids=None, after: int = -1) -> tuple[np.ndarray, np.ndarray]:
        """(iids, vectors) in internal-id order: all items, those above `after`, or the listed ones."""
        if iids is None:
            cur = self.db.execute("SELECT iid, vec FROM items WHERE iid > ? ORDER BY iid", (after,))
            rows = cur.fetchall()
        else:
            rows = []
            for chunk in _chunks([int(i) for i in iids]):
                q = f"SELECT iid, vec FROM items WHERE iid IN ({','.join('?' * len(chunk))})"
                rows += self.db.execute(q, chunk).fetchall()
            rows.sort()
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), self.dim)
        return ids, vecs

    def texts(self, after: int = -1) -> tuple[np.ndarray, list[str]]:
        """(iids, texts) of the items above `after` that have a text, in internal-id order."""
        rows = self.db.execute("SELECT iid, text FROM items WHERE iid > ? AND text IS NOT NULL ORDER BY iid",
                               (after,)).fetchall()
        return np.array([r[0] for r in rows], dtype=np.int64), [r[1] for r in rows]

    def matching(self, where: str, args: list) -> np.ndarray:
        """Internal ids of items whose metadata satisfies a compiled filter, sorted."""
        cur = self.db.execute(f"SELECT iid FROM items WHERE {where} ORDER BY iid", args)
        return np.array([r[0] for r in cur], dtype=np.int64)

    def ids_page(self, offset: int, limit: int) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT id FROM items ORDER BY iid LIMIT ? OFFSET ?", (limit, offset))]


class _Transaction:
    def __init__(self, db, path: Path):
        self.db, self.path = db, path
        self.outer = False

    def __enter__(self):
        self.outer = not self.db.in_transaction
        if self.outer:
            self.db.execute("BEGIN IMMEDIATE")
        return self

    def __exit__(self, exc_type, exc, tb):
        if not self.outer:
            return False
        if exc_type is None:
            try:
                self.db.execute("COMMIT")
                return False
            except sqlite3.OperationalError as failed:
                exc = failed
        if self.db.in_transaction:
            try:
                self.db.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # SQLite rolls back itself when it cannot; the journal keeps the file consistent
        if isinstance(exc, sqlite3.OperationalError) and _write_failure(exc):
            raise Unavailable(f"could not write to {self.path}: {exc}; is the disk full? Nothing of this "
                              "change was kept; everything acknowledged before it is safe") from exc
        if exc_type is None:
            raise exc
        return False


def _write_failure(exc: sqlite3.OperationalError) -> bool:
    message = str(exc).lower()
    return "disk" in message or "full" in message or "i/o" in message


def _chunks(seq: list):
    for i in range(0, len(seq), CHUNK):
        yield seq[i:i + CHUNK]

