//! Just enough SQL to see what a pooler must see: a tokenizer that knows PostgreSQL's
//! literals, quoted identifiers and comments (scan.l), and the session-setting statements
//! built on it. Not a parser.

pub mod fingerprint;
pub mod lexer;
pub mod session;
