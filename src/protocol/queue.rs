//! Queue names and job references (`<queue>#<id>`): the rules for what a
//! client types, in one place.

use super::topic;

/// Every queue `q` has a dead-letter queue `q.dead`.
pub const DEAD_SUFFIX: &str = ".dead";
/// Longest queue name: a topic name's, less room for the dead-letter suffix
/// (a name that already ends in it may use that room).
pub const MAX_LEN: usize = topic::MAX_LEN - DEAD_SUFFIX.len();

/// A queue name is a topic name without `#`, of at most `MAX_LEN` bytes
/// before an optional `.dead`.
pub fn check(name: &[u8]) -> Result<(), String> {
    topic::check(name).map_err(|e| e.to_string().replace("topic", "queue"))?;
    let base = name.strip_suffix(DEAD_SUFFIX.as_bytes()).unwrap_or(name);
    if base.len() > MAX_LEN {
        return Err(format!("queue name too long (max {MAX_LEN} bytes, plus {DEAD_SUFFIX})"));
    }
    if name.contains(&b'#') {
        return Err("'#' is not allowed in a queue name".into());
    }
    Ok(())
}

/// The dead-letter queue of `queue`: `<queue>.dead`; a dead-letter queue is
/// its own (a job rejected there goes to its back).
pub fn dead_letter(queue: &[u8]) -> Vec<u8> {
    match queue.ends_with(DEAD_SUFFIX.as_bytes()) {
        true => queue.to_vec(),
        false => [queue, DEAD_SUFFIX.as_bytes()].concat(),
    }
}

/// Parses `<queue>#<id>`.
pub fn job_ref(word: &[u8]) -> Result<(&[u8], u64), String> {
    let shown = || String::from_utf8_lossy(&word[..word.len().min(160)]).escape_debug().to_string();
    let Some(hash) = word.iter().rposition(|b| *b == b'#') else {
        return Err(format!("'{}' is not a job (<queue>#<id>, as in the Job line)", shown()));
    };
    let (queue, digits) = (&word[..hash], &word[hash + 1..]);
    check(queue)?;
    let id = match digits.iter().all(u8::is_ascii_digit) {
        true => std::str::from_utf8(digits).ok().and_then(|s| s.parse::<u64>().ok()),
        false => None,
    };
    match id {
        Some(id) if id > 0 => Ok((queue, id)),
        _ => Err(format!("'{}' is not a job: the id is a number from 1", shown())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_refs() {
        assert!(check(b"data_sync").is_ok() && check(b"data_sync.dead").is_ok());
        assert!(check(b"a#b").is_err() && check(b"").is_err() && check(b"a b").is_err());
        let long = vec![b'q'; MAX_LEN];
        assert!(check(&long).is_ok() && check(&[&long[..], b"x"].concat()).is_err());
        let dead = dead_letter(&long);
        assert!(check(&dead).is_ok() && dead.len() == topic::MAX_LEN);
        assert_eq!(dead_letter(&dead), dead);
        assert_eq!(job_ref(b"data_sync#12"), Ok((&b"data_sync"[..], 12)));
        for bad in [&b"q"[..], b"q#", b"q#0", b"q#-1", b"q#+1", b"#1", b"q#1x", b"q#99999999999999999999"] {
            assert!(job_ref(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
