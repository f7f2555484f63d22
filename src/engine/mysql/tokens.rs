//! What the scanner records of a statement for the allowlist: the words whose presence
//! anywhere matters ([`DANGER`]), the block structure of a compound statement ([`Tok`],
//! [`body_ends_inside`]), and how a statement is shown in an error ([`shown`]).

/// The storage engines a loaded table may have: each keeps its rows in the table's own
/// database. MERGE, FEDERATED, CONNECT, SPIDER, OQGRAPH, S3 … read or write elsewhere.
pub const ENGINES: &[&str] = &[
    "InnoDB",
    "MyISAM",
    "Aria",
    "MEMORY",
    "HEAP",
    "CSV",
    "ARCHIVE",
    "BLACKHOLE",
    "ROCKSDB",
];

/// Words whose presence anywhere in a statement's code ([`super::scan::Statement::danger`]) the allowlist
/// looks at: in mysqldump's output, names are always quoted, so a bare word is a keyword.
pub const DANGER: &[&[u8]] = &[
    b"GLOBAL",
    b"PERSIST",
    b"PERSIST_ONLY",
    b"SELECT",
    b"UNION",
    b"CONNECTION",
    b"DIRECTORY",
    b"MERGE",
    b"MRG_MYISAM",
    b"FEDERATED",
    b"SPIDER",
    b"CONNECT",
    b"LOAD_FILE",
    b"OUTFILE",
    b"DUMPFILE",
    b"SONAME",
];

/// The words and marks of a statement's code that say how its compound blocks nest
/// (see [`body_ends_inside`]); every other word or mark is `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tok {
    Begin,
    End,
    If,
    Case,
    Loop,
    Repeat,
    While,
    Then,
    Else,
    Do,
    Row,
    Semi,
    LParen,
    RParen,
    Colon,
    Other,
}

/// Whether a compound statement's code (a routine, trigger or event under a delimiter other
/// than `;`) could hold a second statement: a `;` outside every `BEGIN … END`, `IF … END IF`,
/// `CASE … END`, loop, or blocks that do not close exactly at its end. The client sends the
/// whole text as one query, and the server runs what follows such a `;` as a statement the
/// allowlist never saw. An opener counts only in a statement's place (`REPEAT(` and `IF(` are
/// functions), so anything ambiguous is refused rather than guessed.
pub fn body_ends_inside(tokens: &[Tok]) -> bool {
    let mut depth = 0u32;
    let mut prev = Tok::Semi;
    for (i, &t) in tokens.iter().enumerate() {
        let next = tokens.get(i + 1).copied();
        let statement_place = matches!(
            prev,
            Tok::Semi
                | Tok::Begin
                | Tok::Then
                | Tok::Else
                | Tok::Do
                | Tok::Loop
                | Tok::Repeat
                | Tok::Row
                | Tok::RParen
                | Tok::Colon
        );
        match t {
            Tok::Repeat if prev != Tok::End && next != Some(Tok::LParen) => depth += 1,
            Tok::Begin | Tok::Loop | Tok::While | Tok::Case if prev != Tok::End => depth += 1,
            Tok::If if statement_place && prev != Tok::Other => depth += 1,
            Tok::End => {
                if depth == 0 {
                    return true;
                }
                depth -= 1;
            }
            Tok::Semi if depth == 0 => return true,
            _ => {}
        }
        prev = t;
    }
    depth != 0
}

/// A head for an error message: printable, at most 80 characters.
pub fn shown(head: &[u8]) -> String {
    let text = String::from_utf8_lossy(head.trim_ascii());
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(80)
        .collect();
    if text.chars().count() > 80 {
        out.push('…');
    }
    format!("\"{out}\"")
}
