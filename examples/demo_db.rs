//! Creates `demo.db`, a small SQLite database for the README's first command:
//! `cargo run -q --example demo_db && DATABASE_URL=sqlite:///demo.db cargo run -q -- backup && cargo run -q -- list`

fn main() -> anyhow::Result<()> {
    let conn = rusqlite::Connection::open("demo.db")?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL, created TEXT DEFAULT CURRENT_TIMESTAMP);
         INSERT INTO notes (body) VALUES ('hello from dbkeep'), ('every backup checksummed'), ('and proven restorable');",
    )?;
    let n: i64 = conn.query_row("SELECT count(*) FROM notes", [], |r| r.get(0))?;
    println!("demo.db: {n} notes");
    Ok(())
}
