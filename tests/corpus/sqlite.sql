-- A corpus of the objects real SQLite databases hold, for the round trips of tests/corpus.rs:
-- backup, verify, drill and restore, with the sqlite3 shell's .dump as the oracle.
PRAGMA application_id = 1684171632;
PRAGMA user_version = 42;
PRAGMA foreign_keys = ON;

-- STRICT and WITHOUT ROWID tables, generated columns (virtual and stored), foreign keys,
-- collations, checks.
CREATE TABLE authors (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL COLLATE NOCASE,
    born INTEGER CHECK (born > 0),
    extra ANY
) STRICT;
CREATE TABLE books (
    isbn TEXT PRIMARY KEY,
    author_id INTEGER NOT NULL REFERENCES authors (id) ON DELETE CASCADE,
    title TEXT,
    price REAL,
    cover BLOB,
    title_len INTEGER GENERATED ALWAYS AS (length(title)) VIRTUAL,
    title_upper TEXT GENERATED ALWAYS AS (upper(title)) STORED
) WITHOUT ROWID;
CREATE TABLE tags (
    book TEXT NOT NULL REFERENCES books (isbn),
    tag TEXT NOT NULL,
    PRIMARY KEY (book, tag)
) STRICT, WITHOUT ROWID;
CREATE TABLE "odd ""name"" ✓" ("the key" INTEGER PRIMARY KEY AUTOINCREMENT, "värde" TEXT);

-- An FTS5 virtual table (with its shadow tables), views, triggers, partial and expression
-- indexes.
CREATE VIRTUAL TABLE books_fts USING fts5 (title, body, tokenize = 'unicode61');
CREATE INDEX books_cheap ON books (price) WHERE price < 10;
CREATE INDEX authors_lower ON authors (lower(name));
CREATE UNIQUE INDEX books_title_author ON books (author_id, title COLLATE NOCASE);
CREATE VIEW author_books AS SELECT a.name, b.title FROM authors a JOIN books b ON b.author_id = a.id;
CREATE TABLE audit (at TEXT, what TEXT);
CREATE TRIGGER books_added AFTER INSERT ON books BEGIN
    INSERT INTO audit VALUES ('2024-01-01', 'added ' || NEW.isbn);
END;
CREATE TRIGGER no_view_insert INSTEAD OF INSERT ON author_books BEGIN
    SELECT RAISE(ABORT, 'read-only view');
END;

-- Data: BLOBs, strings with newlines, quotes, backslashes, dollar signs and `\.` lines,
-- Unicode, NULLs, every storage class in an ANY column, a text value that is not UTF-8.
WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 300)
INSERT INTO authors (id, name, born, extra)
SELECT n, 'Author ' || n || ' ' || char(10) || 'ünïcødé ''q'' "dq" \ $$ ✓',
       1900 + n % 100,
       CASE n % 4 WHEN 0 THEN n WHEN 1 THEN n * 1.5 WHEN 2 THEN 'text ' || n ELSE x'00ff' END
FROM g;
WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 900)
INSERT INTO books (isbn, author_id, title, price, cover)
SELECT printf('978-%06d', n), 1 + n % 300, 'Title ' || n || char(10) || '\.' || char(10) || 'end',
       (n % 50) * 0.75, CASE WHEN n % 3 = 0 THEN NULL ELSE CAST(zeroblob(n % 64) || x'deadbeef' AS BLOB) END
FROM g;
INSERT INTO tags SELECT isbn, 'tag' || (rowid_n % 5) FROM (SELECT isbn, row_number() OVER (ORDER BY isbn) AS rowid_n FROM books);
INSERT INTO tags SELECT isbn, 'common' FROM books WHERE price > 20;
INSERT INTO "odd ""name"" ✓" ("värde") VALUES ('a'), (NULL), ('\.'), ('c'), (CAST(x'c328ff' AS TEXT));
DELETE FROM "odd ""name"" ✓" WHERE "the key" = 2;
INSERT INTO books_fts (title, body) SELECT title, 'body of ' || isbn || ' with words: backup restore drill' FROM books;
DELETE FROM books_fts WHERE rowid % 10 = 0;
