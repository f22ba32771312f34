//! The resume cursor: the position of every room on one connection, as one string.
//!
//! The format is `room=seq` pairs joined by commas: `board-1=42,chat=7`. Room names cannot
//! contain `=` or `,`, so the format needs no escaping. `seq` is a plain decimal without leading
//! zeros; `0` means "from the beginning of the retained log". A room missing from the cursor
//! starts from "now". The empty string is the empty cursor.
//!
//! Parsing keeps the order of the pairs and rejects a room named twice, so printing a parsed
//! cursor gives back the same string, and parsing a printed cursor gives back the same cursor.
//!
//! ```
//! use tidewire_protocol::Cursor;
//! let mut c: Cursor = "board-1=42".parse().unwrap();
//! c.set("chat", 7);
//! c.set("board-1", 43);
//! assert_eq!(c.to_string(), "board-1=43,chat=7");
//! assert!("board-1=x".parse::<Cursor>().is_err());
//! ```

use std::fmt;
use std::str::FromStr;

use crate::{validate_room, ProtocolError};

/// Positions of rooms, in the order they were first set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Cursor {
    positions: Vec<(String, u64)>,
}

impl Cursor {
    /// The empty cursor.
    pub fn new() -> Cursor {
        Cursor::default()
    }

    /// The position of `room`, if the cursor has one.
    pub fn get(&self, room: &str) -> Option<u64> {
        self.positions
            .iter()
            .find(|(r, _)| r == room)
            .map(|(_, s)| *s)
    }

    /// Sets the position of `room`, appending it if new. The caller has validated `room`.
    pub fn set(&mut self, room: &str, seq: u64) {
        match self.positions.iter_mut().find(|(r, _)| r == room) {
            Some(entry) => entry.1 = seq,
            None => self.positions.push((room.to_owned(), seq)),
        }
    }

    /// Removes `room`, returning its position.
    pub fn remove(&mut self, room: &str) -> Option<u64> {
        let i = self.positions.iter().position(|(r, _)| r == room)?;
        Some(self.positions.remove(i).1)
    }

    /// The `(room, seq)` pairs in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.positions.iter().map(|(r, s)| (r.as_str(), *s))
    }

    /// Number of rooms in the cursor.
    pub fn len(&self) -> usize {
        self.positions.len()
    }

    /// Whether the cursor names no room.
    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }
}

impl FromStr for Cursor {
    type Err = ProtocolError;

    fn from_str(s: &str) -> Result<Cursor, ProtocolError> {
        let mut cursor = Cursor::new();
        if s.is_empty() {
            return Ok(cursor);
        }
        for pair in s.split(',') {
            let (room, seq) = pair.split_once('=').ok_or_else(|| {
                ProtocolError::BadCursor(format!("`{}` is not room=seq", short(pair)))
            })?;
            validate_room(room).map_err(|_| {
                ProtocolError::BadCursor(format!("bad room name `{}`", short(room)))
            })?;
            let canonical = !seq.is_empty()
                && seq.bytes().all(|b| b.is_ascii_digit())
                && (seq == "0" || !seq.starts_with('0'));
            let seq: u64 = match (canonical, seq.parse()) {
                (true, Ok(n)) => n,
                _ => {
                    return Err(ProtocolError::BadCursor(format!(
                        "`{}` is not a sequence number",
                        short(seq)
                    )))
                }
            };
            if cursor.get(room).is_some() {
                return Err(ProtocolError::BadCursor(format!(
                    "room `{room}` named twice"
                )));
            }
            cursor.positions.push((room.to_owned(), seq));
        }
        Ok(cursor)
    }
}

fn short(s: &str) -> &str {
    match s.char_indices().nth(40) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (room, seq)) in self.positions.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{room}={seq}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn bad_cursors() {
        for bad in [
            "a",
            "a=",
            "=1",
            "a=1,",
            ",a=1",
            "a=-1",
            "a=1x",
            "a=01",
            "a=1,a=2",
            "a b=1",
            "a=99999999999999999999999",
            "a=1;b=2",
            "a=+1",
        ] {
            let err = bad.parse::<Cursor>().unwrap_err();
            assert_eq!(err.code(), crate::ErrorCode::BadCursor, "{bad}");
        }
    }

    #[test]
    fn zero_and_empty() {
        assert_eq!("a=0".parse::<Cursor>().unwrap().get("a"), Some(0));
        assert!("".parse::<Cursor>().unwrap().is_empty());
        assert_eq!(Cursor::new().to_string(), "");
    }

    proptest! {
        #[test]
        fn print_then_parse(pairs in proptest::collection::btree_map("[A-Za-z0-9_.:-]{1,20}", any::<u64>(), 0..10)) {
            let mut c = Cursor::new();
            for (r, s) in &pairs { c.set(r, *s); }
            let printed = c.to_string();
            let parsed: Cursor = printed.parse().unwrap();
            prop_assert_eq!(&parsed, &c);
            prop_assert_eq!(parsed.to_string(), printed);
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,64}") {
            if let Ok(c) = s.parse::<Cursor>() {
                prop_assert_eq!(c.to_string(), s);
            }
        }
    }
}
