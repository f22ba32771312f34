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
//! Parsing takes time linear in the length of the text (a room named twice is found through a
//! hash set). A cursor from the network is parsed with [`Cursor::parse_limited`], which also
//! bounds the work: a text longer than [`Cursor::max_len`] of the limit is refused before it is
//! looked at, and parsing stops at the first pair over the limit.
//!
//! ```
//! use tidewire_protocol::{Cursor, ErrorCode};
//! let mut c: Cursor = "board-1=42".parse().unwrap();
//! c.set("chat", 7);
//! c.set("board-1", 43);
//! assert_eq!(c.to_string(), "board-1=43,chat=7");
//! assert!("board-1=x".parse::<Cursor>().is_err());
//!
//! let err = Cursor::parse_limited("a=1,b=2,c=3", 2).unwrap_err();
//! assert_eq!(err.code(), ErrorCode::BadCursor);
//! assert_eq!(err.to_string(), "bad cursor: more than 2 rooms (the limit)");
//! ```

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use crate::limits::MAX_ROOM_NAME_LEN;
use crate::{validate_room, ProtocolError};

/// The longest text one pair can take: a room name of [`MAX_ROOM_NAME_LEN`] bytes, `=`, a
/// sequence number of up to 20 digits (`u64::MAX`), and the `,` before the next pair.
pub const MAX_CURSOR_PAIR_BYTES: usize = MAX_ROOM_NAME_LEN + 1 + 20 + 1;

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

    /// The longest text a cursor of at most `max_pairs` rooms can be, in bytes:
    /// `max_pairs` × [`MAX_CURSOR_PAIR_BYTES`].
    ///
    /// ```
    /// assert_eq!(tidewire_protocol::Cursor::max_len(64), 9_600);
    /// ```
    pub fn max_len(max_pairs: usize) -> usize {
        max_pairs.saturating_mul(MAX_CURSOR_PAIR_BYTES)
    }

    /// Parses a cursor of at most `max_pairs` rooms, as a server does with what a client sends
    /// (`Last-Event-ID`, `?since=`, `subscribe.since`). A text longer than
    /// [`Cursor::max_len`]`(max_pairs)` is refused without being parsed; otherwise parsing
    /// stops with [`ProtocolError::BadCursor`] as soon as pair number `max_pairs + 1` begins,
    /// so the work is bounded by the limit, not by the input.
    ///
    /// ```
    /// use tidewire_protocol::Cursor;
    /// assert_eq!(Cursor::parse_limited("a=1,b=2", 2).unwrap().len(), 2);
    /// let long = "a=1,".repeat(10_000);
    /// let err = Cursor::parse_limited(&long, 64).unwrap_err();
    /// assert!(err.to_string().contains("longer than 9600 bytes"), "{err}");
    /// ```
    pub fn parse_limited(s: &str, max_pairs: usize) -> Result<Cursor, ProtocolError> {
        let max_len = Cursor::max_len(max_pairs);
        if s.len() > max_len {
            return Err(ProtocolError::BadCursor(format!(
                "longer than {max_len} bytes, the most {max_pairs} rooms can take"
            )));
        }
        parse(s, Some(max_pairs))
    }

    /// The position of `room`, if the cursor has one.
    ///
    /// This (like [`Cursor::set`] and [`Cursor::remove`]) scans the pairs: time linear in the
    /// number of rooms, which is right for the cursor of one connection (at most
    /// `max_rooms_per_connection` rooms, 64 by default), not for a cursor of thousands.
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

    /// Parses a cursor of any number of rooms, in time linear in the length of `s`. For text
    /// from the network use [`Cursor::parse_limited`].
    fn from_str(s: &str) -> Result<Cursor, ProtocolError> {
        parse(s, None)
    }
}

/// Parses `s`, stopping at the pair after `max_pairs` when there is a limit.
fn parse(s: &str, max_pairs: Option<usize>) -> Result<Cursor, ProtocolError> {
    let mut cursor = Cursor::new();
    if s.is_empty() {
        return Ok(cursor);
    }
    // The rooms seen so far: finding a room named twice costs O(1), not a scan of the pairs.
    let mut seen: HashSet<&str> = HashSet::new();
    for (i, pair) in s.split(',').enumerate() {
        if max_pairs == Some(i) {
            return Err(ProtocolError::BadCursor(format!(
                "more than {i} rooms (the limit)"
            )));
        }
        let (room, seq) = pair.split_once('=').ok_or_else(|| {
            ProtocolError::BadCursor(format!("`{}` is not room=seq", short(pair)))
        })?;
        validate_room(room)
            .map_err(|_| ProtocolError::BadCursor(format!("bad room name `{}`", short(room))))?;
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
        if !seen.insert(room) {
            return Err(ProtocolError::BadCursor(format!(
                "room `{room}` named twice"
            )));
        }
        cursor.positions.push((room.to_owned(), seq));
    }
    Ok(cursor)
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

    /// `n` distinct pairs `r0=0,r1=1,…`.
    fn pairs(n: usize) -> String {
        (0..n)
            .map(|i| format!("r{i}={i}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    #[test]
    fn parse_limited_takes_up_to_the_limit_and_names_it_beyond() {
        let c = Cursor::parse_limited(&pairs(64), 64).unwrap();
        assert_eq!(c.len(), 64);
        assert_eq!(c.to_string(), pairs(64));
        let err = Cursor::parse_limited(&pairs(65), 64).unwrap_err();
        assert_eq!(err.code(), crate::ErrorCode::BadCursor);
        assert_eq!(
            err.to_string(),
            "bad cursor: more than 64 rooms (the limit)"
        );
        assert!(Cursor::parse_limited("", 0).unwrap().is_empty());
        assert!(Cursor::parse_limited("a=1", 0).is_err());
        // The bad cursors are bad under a limit too.
        for bad in ["a", "a=1,a=2", "a=01", "a=1,"] {
            assert!(Cursor::parse_limited(bad, 64).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_longest_cursor_of_the_limit_fits_its_length_bound() {
        let room = "r".repeat(MAX_ROOM_NAME_LEN - 3);
        let longest: Vec<String> = (0..64)
            .map(|i| format!("{room}{i:03}={}", u64::MAX))
            .collect();
        let longest = longest.join(",");
        assert!(longest.len() <= Cursor::max_len(64));
        assert_eq!(Cursor::parse_limited(&longest, 64).unwrap().len(), 64);
        let over = format!("{longest},{}", "x".repeat(MAX_CURSOR_PAIR_BYTES));
        let err = Cursor::parse_limited(&over, 64).unwrap_err();
        assert_eq!(
            err.to_string(),
            "bad cursor: longer than 9600 bytes, the most 64 rooms can take"
        );
        assert_eq!(Cursor::max_len(usize::MAX), usize::MAX, "no overflow");
    }

    #[test]
    fn parse_limited_stops_at_the_first_pair_over_the_limit() {
        // Short pairs fit many more than 64 into the length bound. Everything after pair 64 is
        // garbage: an error naming the limit (not the garbage) shows that parsing stopped at
        // pair 65 without looking at the rest.
        let mut text = pairs(64);
        for _ in 0..1_000 {
            text.push_str(",!");
        }
        assert!(text.len() <= Cursor::max_len(64));
        let err = Cursor::parse_limited(&text, 64).unwrap_err();
        assert_eq!(
            err.to_string(),
            "bad cursor: more than 64 rooms (the limit)"
        );
        // Unbounded, the same text fails on the garbage itself.
        let err = text.parse::<Cursor>().unwrap_err();
        assert!(err.to_string().contains("is not room=seq"), "{err}");
    }

    #[test]
    fn a_16000_pair_cursor_is_refused_by_length_before_parsing() {
        let text = pairs(16_000);
        let started = std::time::Instant::now();
        let err = Cursor::parse_limited(&text, 64).unwrap_err();
        assert!(err.to_string().contains("longer than 9600 bytes"), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn unbounded_parsing_is_linear() {
        // Quadratic duplicate detection took 2.8 s for 16,000 pairs in a debug build, so it
        // would take minutes for 200,000; linear parsing takes well under a second.
        let text = pairs(200_000);
        let started = std::time::Instant::now();
        let c: Cursor = text.parse().unwrap();
        let took = started.elapsed();
        assert_eq!(c.len(), 200_000);
        assert_eq!(c.get("r199999"), Some(199_999));
        assert!(
            took < std::time::Duration::from_secs(10),
            "200,000 pairs took {took:?}"
        );
        // A room named twice is still found at the end of a long cursor.
        let twice = format!("{text},r0=1");
        let err = twice.parse::<Cursor>().unwrap_err();
        assert_eq!(err.to_string(), "bad cursor: room `r0` named twice");
    }

    proptest! {
        #[test]
        fn parse_limited_agrees_with_unbounded_parsing(n in 0usize..40, limit in 0usize..40) {
            let text = pairs(n);
            let unbounded: Cursor = text.parse().unwrap();
            match Cursor::parse_limited(&text, limit) {
                Ok(c) => {
                    prop_assert!(n <= limit);
                    prop_assert_eq!(c, unbounded);
                }
                Err(err) => {
                    prop_assert!(n > limit);
                    prop_assert_eq!(err.code(), crate::ErrorCode::BadCursor);
                }
            }
        }

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
