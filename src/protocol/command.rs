//! The commands a person types, parsed from one line without copying.

use super::topic;

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
    Ping,
    Help,
    Quit,
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
        self.0.split(|b| is_space(*b)).filter(|t| !t.is_empty())
    }
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
        let args = trim_start(args);
        let end = args.iter().position(|b| is_space(*b));
        match end {
            Some(end) if end + 1 < args.len() => {
                let topic = &args[..end];
                topic::check(topic).map_err(|e| e.to_string())?;
                Command::Pub { topic, message: &args[end + 1..] }
            }
            _ => return Err("usage: pub <topic> <message>".into()),
        }
    } else if is("subscribe") || is("sub") {
        Command::Subscribe(topics(args)?)
    } else if is("unsubscribe") || is("unsub") {
        Command::Unsubscribe(topics(args)?)
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
    fn errors() {
        assert!(parse(b"frobnicate").unwrap_err().starts_with("unknown command 'frobnicate'"));
        assert!(parse(b"publish").is_err());
        assert!(parse(b"pub onlytopic").is_err());
        assert!(parse(&[b"sub ".as_slice(), &[b'x'; 200]].concat()).unwrap_err().contains("too long"));
        assert!(parse(b"sub a\x01b").unwrap_err().contains("0x01"));
        assert_eq!(parse(b"   ").unwrap(), None);
    }

    proptest! {
        #[test]
        fn never_panics(line in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse(&line);
        }
    }
}
