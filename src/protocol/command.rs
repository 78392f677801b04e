//! The commands a person types, parsed from one line without copying.

use super::frame::Verdict;
use super::{queue, topic};

/// How many unacknowledged jobs a `consume` without a prefetch may hold.
pub const DEFAULT_PREFETCH: u32 = 10;
pub const MAX_PREFETCH: u32 = 10_000;

#[derive(Debug, PartialEq, Eq)]
pub enum Command<'a> {
    /// `publish <message>`: to the server's default topic.
    Publish(&'a [u8]),
    /// `pub <topic> <message>`.
    Pub {
        topic: &'a [u8],
        message: &'a [u8],
    },
    /// `subscribe [topic …]`; the topics are already validated.
    Subscribe(Topics<'a>),
    /// `unsubscribe [topic …]`.
    Unsubscribe(Topics<'a>),
    /// `resume <topic> <seq>`.
    Resume {
        topic: &'a [u8],
        from: u64,
    },
    /// `history <topic> [<n>]`.
    History {
        topic: &'a [u8],
        n: u32,
    },
    /// `info <topic>`.
    Info(&'a [u8]),
    /// `seq on|off`.
    Seq(bool),
    /// `confirm on|off`.
    Confirm(bool),
    /// `enqueue <queue> <message>`.
    Enqueue {
        queue: &'a [u8],
        message: &'a [u8],
    },
    /// `consume <queue> [<prefetch>]`.
    Consume {
        queue: &'a [u8],
        prefetch: u32,
    },
    /// `unconsume [queue …]` (validated; none: every queue consumed).
    Unconsume(Topics<'a>),
    /// `ack|nack|reject <queue>#<id> …`: each job is checked on its own,
    /// so that each bad one gets its own `ERR`.
    Settle {
        verdict: Verdict,
        jobs: Jobs<'a>,
    },
    /// `queues`.
    Queues,
    Ping,
    Help,
    Quit,
}

/// The most messages one `history` shows.
pub const MAX_HISTORY: u32 = 1000;

/// The `<queue>#<id>` arguments of an ack/nack/reject line.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub struct Jobs<'a>(&'a [u8]);

impl<'a> Jobs<'a> {
    pub fn iter(&self) -> impl Iterator<Item = Result<(&'a [u8], u64), String>> {
        split_words(self.0).map(queue::job_ref)
    }
}

/// The topic arguments of a subscribe/unsubscribe line (whitespace-separated,
/// each one valid). Empty means "the default" / "all".
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub struct Topics<'a>(&'a [u8]);

impl<'a> Topics<'a> {
    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }

    pub fn iter(&self) -> impl Iterator<Item = &'a [u8]> + Clone {
        split_words(self.0)
    }
}

/// Whether the command needs the channel server's numbering, retention,
/// confirms or queues (`resume`, `history`, `info`, `seq`, `confirm`, the
/// work-queue commands): not on a NATS bus.
pub fn numbered(cmd: &Command<'_>) -> bool {
    !matches!(
        cmd,
        Command::Publish(_)
            | Command::Pub { .. }
            | Command::Subscribe(_)
            | Command::Unsubscribe(_)
            | Command::Ping
            | Command::Help
            | Command::Quit
    )
}
/// Parses one line. `Ok(None)` is an empty line (ignored); `Err` is the text of
/// the `ERR` reply.
pub fn parse(line: &[u8]) -> Result<Option<Command<'_>>, String> {
    let line = trim_start(line);
    if line.is_empty() || line.iter().all(|b| is_space(*b)) {
        return Ok(None);
    }
    let end = line.iter().position(|b| is_space(*b)).unwrap_or(line.len());
    let (word, rest) = line.split_at(end);
    // One separator after the command word; the rest is kept as typed.
    let args = if rest.is_empty() { rest } else { &rest[1..] };
    let is = |name: &str| word.eq_ignore_ascii_case(name.as_bytes());
    let cmd = if is("publish") {
        if args.is_empty() {
            return Err("usage: publish <message>".into());
        }
        Command::Publish(args)
    } else if is("pub") {
        let (topic, message) = name_and_message(args).ok_or("usage: pub <topic> <message>")?;
        topic::check(topic).map_err(|e| e.to_string())?;
        Command::Pub { topic, message }
    } else if is("enqueue") {
        let (queue, message) = name_and_message(args).ok_or("usage: enqueue <queue> <message>")?;
        queue::check(queue)?;
        Command::Enqueue { queue, message }
    } else if is("consume") {
        let (queue, prefetch) = match words(args)[..] {
            [queue] => (queue, Some(u64::from(DEFAULT_PREFETCH))),
            [queue, p] => (queue, number(p).filter(|n| (1..=u64::from(MAX_PREFETCH)).contains(n))),
            _ => return Err("usage: consume <queue> [<prefetch>]".into()),
        };
        queue::check(queue)?;
        let prefetch = prefetch.ok_or(format!("the prefetch is a number from 1 to {MAX_PREFETCH}"))? as u32;
        Command::Consume { queue, prefetch }
    } else if is("unconsume") {
        let q = Topics(args);
        q.iter().try_for_each(queue::check)?;
        Command::Unconsume(q)
    } else if is("ack") || is("nack") || is("reject") {
        let verdict = match () {
            _ if is("ack") => Verdict::Ack,
            _ if is("nack") => Verdict::Nack,
            _ => Verdict::Reject,
        };
        if words(args).is_empty() {
            return Err(format!("usage: {} <queue>#<id> ...", String::from_utf8_lossy(word).to_lowercase()));
        }
        Command::Settle { verdict, jobs: Jobs(args) }
    } else if is("queues") && args.iter().all(|b| is_space(*b)) {
        Command::Queues
    } else if is("subscribe") || is("sub") {
        Command::Subscribe(topics(args)?)
    } else if is("unsubscribe") || is("unsub") {
        Command::Unsubscribe(topics(args)?)
    } else if is("resume") {
        match words(args)[..] {
            [topic, seq] => {
                topic::check(topic).map_err(|e| e.to_string())?;
                Command::Resume {
                    topic,
                    from: number(seq).filter(|n| *n > 0).ok_or("usage: resume <topic> <seq> (seq from 1)")?,
                }
            }
            _ => return Err("usage: resume <topic> <seq>".into()),
        }
    } else if is("history") {
        let usage = || format!("usage: history <topic> [n] (n from 1 to {MAX_HISTORY})");
        let (topic, n) = match words(args)[..] {
            [topic] => (topic, 10),
            [topic, n] => {
                (topic, number(n).filter(|n| (1..=u64::from(MAX_HISTORY)).contains(n)).ok_or_else(usage)? as u32)
            }
            _ => return Err(usage()),
        };
        topic::check(topic).map_err(|e| e.to_string())?;
        Command::History { topic, n }
    } else if is("info") {
        match words(args)[..] {
            [topic] => {
                topic::check(topic).map_err(|e| e.to_string())?;
                Command::Info(topic)
            }
            _ => return Err("usage: info <topic>".into()),
        }
    } else if is("seq") || is("confirm") {
        let on = match words(args)[..] {
            [w] if w.eq_ignore_ascii_case(b"on") => true,
            [w] if w.eq_ignore_ascii_case(b"off") => false,
            _ => return Err(format!("usage: {} on|off", if is("seq") { "seq" } else { "confirm" })),
        };
        if is("seq") {
            Command::Seq(on)
        } else {
            Command::Confirm(on)
        }
    } else if is("ping") && args.iter().all(|b| is_space(*b)) {
        Command::Ping
    } else if is("help") {
        Command::Help
    } else if is("quit") || is("exit") {
        Command::Quit
    } else {
        let shown = String::from_utf8_lossy(&word[..word.len().min(32)]).into_owned();
        return Err(format!("unknown command '{}' (type help for the list)", shown.escape_debug()));
    };
    Ok(Some(cmd))
}

fn topics(args: &[u8]) -> Result<Topics<'_>, String> {
    let t = Topics(args);
    t.iter().try_for_each(topic::check).map_err(|e| e.to_string())?;
    Ok(t)
}

fn words(args: &[u8]) -> Vec<&[u8]> {
    split_words(args).collect()
}

fn split_words(args: &[u8]) -> impl Iterator<Item = &[u8]> + Clone {
    args.split(|b| is_space(*b)).filter(|w| !w.is_empty())
}

/// A decimal number without sign, up to u64.
fn number(w: &[u8]) -> Option<u64> {
    std::str::from_utf8(w).ok().filter(|s| s.bytes().all(|b| b.is_ascii_digit())).and_then(|s| s.parse().ok())
}

/// `<name> <message>`: the name, and the message as typed after one separator.
fn name_and_message(args: &[u8]) -> Option<(&[u8], &[u8])> {
    let args = trim_start(args);
    let end = args.iter().position(|b| is_space(*b))?;
    (end + 1 < args.len()).then(|| (&args[..end], &args[end + 1..]))
}

fn is_space(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn trim_start(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|b| is_space(**b)).count();
    &s[n..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn publish_keeps_spaces() {
        assert_eq!(parse(b"PUBLISH  a b ").unwrap(), Some(Command::Publish(b" a b ")));
        assert_eq!(parse(b"pub t1 hello world").unwrap(), Some(Command::Pub { topic: b"t1", message: b"hello world" }));
    }

    #[test]
    fn subscribe_topics() {
        let Some(Command::Subscribe(t)) = parse(b"sub a  b").unwrap() else { panic!() };
        assert_eq!(t.iter().collect::<Vec<_>>(), vec![&b"a"[..], b"b"]);
        let Some(Command::Subscribe(t)) = parse(b"Subscribe").unwrap() else { panic!() };
        assert!(t.is_empty());
    }

    #[test]
    fn numbered_commands() {
        assert_eq!(parse(b"resume t 5").unwrap(), Some(Command::Resume { topic: b"t", from: 5 }));
        assert_eq!(parse(b"history t").unwrap(), Some(Command::History { topic: b"t", n: 10 }));
        assert_eq!(parse(b"HISTORY t 3").unwrap(), Some(Command::History { topic: b"t", n: 3 }));
        assert_eq!(parse(b"info t").unwrap(), Some(Command::Info(b"t")));
        assert_eq!(parse(b"seq ON").unwrap(), Some(Command::Seq(true)));
        assert_eq!(parse(b"confirm off").unwrap(), Some(Command::Confirm(false)));
        for bad in [&b"resume t"[..], b"resume t 0", b"resume t -1", b"resume t 1 2", b"history t 0", b"history t 1001"]
        {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        assert!(parse(b"seq maybe").unwrap_err().starts_with("usage: seq"));
        assert!(parse(b"info").is_err() && parse(b"resume t 99999999999999999999").is_err());
    }

    #[test]
    fn errors() {
        assert!(parse(b"frobnicate").unwrap_err().starts_with("unknown command 'frobnicate'"));
        assert!(parse(b"publish").is_err());
        assert!(parse(b"pub onlytopic").is_err());
        assert!(parse(&[b"sub ".as_slice(), &[b'x'; 200]].concat()).unwrap_err().contains("too long"));
        assert!(parse(b"sub a\x01b").unwrap_err().contains("0x01"));
        assert_eq!(parse(b"   ").unwrap(), None);
    }

    #[test]
    fn queue_commands() {
        let enq = Command::Enqueue { queue: b"data_sync", message: b"Hello World!" };
        assert_eq!(parse(b"enqueue data_sync Hello World!").unwrap(), Some(enq));
        assert_eq!(parse(b"consume q").unwrap(), Some(Command::Consume { queue: b"q", prefetch: DEFAULT_PREFETCH }));
        assert_eq!(parse(b"CONSUME q 3").unwrap(), Some(Command::Consume { queue: b"q", prefetch: 3 }));
        for bad in
            [&b"consume q 0"[..], b"consume q x", b"consume q 10001", b"consume q 1 2", b"consume", b"consume a#b"]
        {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        assert!(parse(b"enqueue q").is_err() && parse(b"ack").is_err() && parse(b"queues x").is_err());
        let Some(Command::Settle { verdict: Verdict::Nack, jobs }) = parse(b"nack q#1  bad").unwrap() else { panic!() };
        let got: Vec<_> = jobs.iter().map(|j| j.is_ok()).collect();
        assert_eq!(got, [true, false], "each job on its own");
        assert_eq!(parse(b"queues").unwrap(), Some(Command::Queues));
        let Some(Command::Unconsume(q)) = parse(b"unconsume").unwrap() else { panic!() };
        assert!(q.is_empty());
    }

    proptest! {
        #[test]
        fn never_panics(line in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse(&line);
        }
    }
}
