//! The protocol between the load generator and its worker processes: one command per line on
//! the worker's stdin, one JSON reply per line on its stdout.
//!
//! ```text
//! → status                      ← {"reply":"status","ready":5000,"failed":0,...}
//! → record on | record off      ← {"reply":"ok"}
//! → latency                     ← {"reply":"latency","pairs":[[120,3],...],"max_us":9000}
//! → resume-after 1763841600000000
//!                               ← {"reply":"ok"}
//! → final 1763841590000000 20000 storm-0=40,storm-1=41
//!                               ← {"reply":"storm","clients":5000,"lost":0,...}
//! → quit                        ← {"reply":"ok"}, then the worker exits
//! ```
//!
//! Times are microseconds since the Unix epoch, so that every process measures against the same
//! clock.

use serde::{Deserialize, Serialize};

use crate::BenchError;

/// What the generator asks a worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Counters so far.
    Status,
    /// Start (`true`) or stop keeping latency samples.
    Record(bool),
    /// The latency histogram since the last `latency`, then clear it.
    Latency,
    /// Storm: a stream that starts after this time is with the restarted server.
    ResumeAfter(u64),
    /// Storm: wait up to `wait_ms` until every client reached its room's `head`, then report;
    /// resume times count from `sigterm_us`.
    Final {
        /// When the server was told to stop.
        sigterm_us: u64,
        /// How long to wait for stragglers.
        wait_ms: u64,
        /// Each room's last acknowledged `seq`.
        heads: Vec<(String, u64)>,
    },
    /// Close every client and exit.
    Quit,
}

fn number(word: Option<&str>, line: &str) -> Result<u64, BenchError> {
    word.and_then(|w| w.parse().ok())
        .ok_or_else(|| BenchError::Protocol(format!("bad number in {line:?}")))
}

impl Command {
    /// Parses one line (without its newline).
    pub fn parse(line: &str) -> Result<Command, BenchError> {
        let mut words = line.split_whitespace();
        let bad = || BenchError::Protocol(format!("unknown command {line:?}"));
        Ok(match words.next().ok_or_else(bad)? {
            "status" => Command::Status,
            "record" => match words.next() {
                Some("on") => Command::Record(true),
                Some("off") => Command::Record(false),
                _ => return Err(bad()),
            },
            "latency" => Command::Latency,
            "resume-after" => Command::ResumeAfter(number(words.next(), line)?),
            "final" => {
                let sigterm_us = number(words.next(), line)?;
                let wait_ms = number(words.next(), line)?;
                let heads = match words.next() {
                    None => Vec::new(),
                    Some(cursor) => cursor
                        .split(',')
                        .map(|pair| {
                            let (room, seq) = pair.split_once('=').ok_or_else(bad)?;
                            Ok((room.to_string(), number(Some(seq), line)?))
                        })
                        .collect::<Result<_, BenchError>>()?,
                };
                Command::Final {
                    sigterm_us,
                    wait_ms,
                    heads,
                }
            }
            "quit" => Command::Quit,
            _ => return Err(bad()),
        })
    }

    /// The line that [`Command::parse`] reads back (with its newline).
    pub fn line(&self) -> String {
        match self {
            Command::Status => "status\n".into(),
            Command::Record(on) => format!("record {}\n", if *on { "on" } else { "off" }),
            Command::Latency => "latency\n".into(),
            Command::ResumeAfter(t) => format!("resume-after {t}\n"),
            Command::Final {
                sigterm_us,
                wait_ms,
                heads,
            } => {
                let cursor: Vec<String> = heads.iter().map(|(r, s)| format!("{r}={s}")).collect();
                format!("final {sigterm_us} {wait_ms} {}\n", cursor.join(","))
            }
            Command::Quit => "quit\n".into(),
        }
    }
}

/// A worker's counters.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Clients connected and subscribed (storm: that started a stream at least once).
    pub ready: usize,
    /// Clients that gave up.
    pub failed: usize,
    /// Events received.
    pub deliveries: u64,
    /// Storm: clients whose stream started again after `resume-after`.
    pub resumed: usize,
    /// The first failure.
    pub first_error: Option<String>,
}

impl Status {
    /// Adds another worker's counters (the first error wins).
    pub fn add(&mut self, o: &Status) {
        self.ready += o.ready;
        self.failed += o.failed;
        self.deliveries += o.deliveries;
        self.resumed += o.resumed;
        if self.first_error.is_none() {
            self.first_error.clone_from(&o.first_error);
        }
    }
}

/// A worker's result of a reconnect storm.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StormResult {
    /// Clients of the worker.
    pub clients: usize,
    /// Clients that reached their room's head before the wait ended.
    pub complete: usize,
    /// Clients that resumed on the restarted server.
    pub resumed: usize,
    /// Events missing, over all clients.
    pub lost: u64,
    /// Events delivered twice, over all clients.
    pub duplicated: u64,
    /// Distinct events received, over all clients.
    pub received: u64,
    /// Clients resumed per second after SIGTERM.
    pub resumed_per_second: Vec<usize>,
    /// The last client's resume time after SIGTERM, in milliseconds.
    pub last_resume_ms: u64,
}

impl StormResult {
    /// Adds another worker's result.
    pub fn add(&mut self, o: &StormResult) {
        self.clients += o.clients;
        self.complete += o.complete;
        self.resumed += o.resumed;
        self.lost += o.lost;
        self.duplicated += o.duplicated;
        self.received += o.received;
        crate::histogram::add_per_second(&mut self.resumed_per_second, &o.resumed_per_second);
        self.last_resume_ms = self.last_resume_ms.max(o.last_resume_ms);
    }
}

/// What a worker answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    /// Done.
    Ok,
    /// Answer to `status`.
    Status(Status),
    /// Answer to `latency`.
    Latency {
        /// Non-empty buckets of the histogram.
        pairs: Vec<(u32, u64)>,
        /// Largest sample.
        max_us: u64,
    },
    /// Answer to `final`.
    Storm(StormResult),
    /// The command could not be carried out.
    Error {
        /// Why.
        message: String,
    },
}

impl Reply {
    /// One line of JSON, with its newline.
    pub fn line(&self) -> String {
        let mut s = serde_json::to_string(self).unwrap_or_else(|e| {
            format!(r#"{{"reply":"error","message":"encoding the reply: {e}"}}"#)
        });
        s.push('\n');
        s
    }

    /// Parses a worker's line; an `error` reply becomes an error.
    pub fn parse(line: &str) -> Result<Reply, BenchError> {
        match serde_json::from_str(line) {
            Ok(Reply::Error { message }) => Err(BenchError::Protocol(message)),
            Ok(r) => Ok(r),
            Err(e) => Err(BenchError::Protocol(format!(
                "bad reply {:?}: {e}",
                &line[..line.len().min(120)]
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_reads_back_as_itself() {
        for c in [
            Command::Status,
            Command::Record(true),
            Command::Record(false),
            Command::Latency,
            Command::ResumeAfter(1_763_841_600_000_000),
            Command::Final {
                sigterm_us: 7,
                wait_ms: 20_000,
                heads: vec![("storm-0".into(), 40), ("storm-1".into(), 41)],
            },
            Command::Final {
                sigterm_us: 7,
                wait_ms: 0,
                heads: vec![],
            },
            Command::Quit,
        ] {
            let line = c.line();
            assert!(line.ends_with('\n'));
            assert_eq!(Command::parse(line.trim_end()).unwrap(), c, "{line}");
        }
    }

    #[test]
    fn bad_commands_are_typed_errors() {
        for bad in [
            "",
            "jump",
            "record maybe",
            "resume-after soon",
            "final 1",
            "final 1 2 storm-0",
            "final 1 2 storm-0=x",
        ] {
            assert!(
                matches!(Command::parse(bad), Err(BenchError::Protocol(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn replies_round_trip_and_errors_surface() {
        let s = Reply::Status(Status {
            ready: 3,
            failed: 1,
            deliveries: 99,
            resumed: 2,
            first_error: Some("refused".into()),
        });
        let line = s.line();
        assert!(line.starts_with(r#"{"reply":"status""#), "{line}");
        assert_eq!(Reply::parse(line.trim_end()).unwrap(), s);
        let l = Reply::Latency {
            pairs: vec![(100, 2), (350, 1)],
            max_us: 9_000,
        };
        assert_eq!(Reply::parse(&l.line()).unwrap(), l);
        assert!(matches!(
            Reply::parse(r#"{"reply":"error","message":"no"}"#),
            Err(BenchError::Protocol(m)) if m == "no"
        ));
        assert!(Reply::parse("tidewire listening").is_err());
    }

    #[test]
    fn results_add_up() {
        let mut a = StormResult {
            clients: 2,
            resumed_per_second: vec![0, 2],
            last_resume_ms: 1500,
            ..StormResult::default()
        };
        a.add(&StormResult {
            clients: 3,
            lost: 1,
            resumed_per_second: vec![1, 1, 1],
            last_resume_ms: 2100,
            ..StormResult::default()
        });
        assert_eq!(a.clients, 5);
        assert_eq!(a.lost, 1);
        assert_eq!(a.resumed_per_second, vec![1, 3, 1]);
        assert_eq!(a.last_resume_ms, 2100);
        let mut s = Status::default();
        s.add(&Status {
            ready: 4,
            first_error: Some("x".into()),
            ..Status::default()
        });
        s.add(&Status {
            ready: 1,
            first_error: Some("y".into()),
            ..Status::default()
        });
        assert_eq!((s.ready, s.first_error.as_deref()), (5, Some("x")));
    }
}
