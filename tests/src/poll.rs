//! A long-poll client that carries its cursor from answer to answer.
//!
//! ```no_run
//! # async fn demo() -> tidewire_tests::Result<()> {
//! use tidewire_tests::{PollClient, Rest};
//! let mut poll = PollClient::new(Rest::new("http://127.0.0.1:8080"), &["a", "b"]);
//! poll.set_cursor("a=0,b=0");
//! let events = poll.poll(1).await?; // everything from the start, or an empty answer after 1 s
//! println!("now at {}", poll.cursor().unwrap_or(""));
//! # Ok(()) }
//! ```

use tidewire_protocol::Envelope;

use crate::{Error, Rest, Result};

/// A long-poll client of some rooms.
#[derive(Debug, Clone)]
pub struct PollClient {
    rest: Rest,
    rooms: Vec<String>,
    cursor: Option<String>,
}

impl PollClient {
    /// A client of `rooms` with no cursor yet (the first poll starts at the rooms' heads).
    pub fn new(rest: Rest, rooms: &[&str]) -> PollClient {
        PollClient {
            rest,
            rooms: rooms.iter().map(|r| (*r).to_owned()).collect(),
            cursor: None,
        }
    }

    /// The cursor of the last answer.
    pub fn cursor(&self) -> Option<&str> {
        self.cursor.as_deref()
    }

    /// Sets the cursor sent with the next poll.
    pub fn set_cursor(&mut self, cursor: &str) {
        self.cursor = Some(cursor.to_owned());
    }

    /// One long-poll with `wait` seconds; moves the cursor to the answer's.
    pub async fn poll(&mut self, wait_secs: u64) -> Result<Vec<Envelope>> {
        let rooms: Vec<&str> = self.rooms.iter().map(String::as_str).collect();
        let answer = self
            .rest
            .poll(&rooms, self.cursor.as_deref(), wait_secs)
            .await?;
        match answer.body {
            Ok(resp) => {
                self.cursor = Some(resp.cursor);
                Ok(resp.events)
            }
            Err(p) => Err(Error::Problem(Box::new(p))),
        }
    }
}
