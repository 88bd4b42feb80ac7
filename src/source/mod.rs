//! Sources turn the outside world into framed records with a position. They
//! know nothing of audit semantics. This module holds the line framing used
//! for files and standard input.

pub mod framing;
pub mod lines;
