//! Topic names: the rules for a name taken from a client line, a flag or a
//! frame, in one place.

use std::fmt;

/// Longest topic name, in bytes.
pub const MAX_LEN: usize = 128;

/// Why a topic name is refused.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum TopicError {
    Empty,
    TooLong,
    InvalidByte(u8),
}

impl fmt::Display for TopicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopicError::Empty => write!(f, "empty topic name"),
            TopicError::TooLong => write!(f, "topic name too long (max {MAX_LEN} bytes)"),
            TopicError::InvalidByte(b) => {
                write!(f, "invalid byte 0x{b:02x} in topic name (printable ASCII only, no spaces)")
            }
        }
    }
}

impl std::error::Error for TopicError {}

/// A topic name is 1 to `MAX_LEN` bytes of printable ASCII (`!` to `~`).
pub fn check(topic: &[u8]) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    check_len(topic)?;
    match topic.iter().find(|b| !b.is_ascii_graphic()) {
        Some(&b) => Err(TopicError::InvalidByte(b)),
        None => Ok(()),
    }
}

/// Only the length rule: frames carry names the channel server checks whole
/// when a worker subscribes, and forwards by length alone.
pub fn check_len(topic: &[u8]) -> Result<(), TopicError> {
    match topic.len() {
        0 => Err(TopicError::Empty),
        n if n > MAX_LEN => Err(TopicError::TooLong),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules() {
        assert_eq!(check(b"topic1"), Ok(()));
        assert_eq!(check(b"a!~"), Ok(()));
        assert_eq!(check(b""), Err(TopicError::Empty));
        assert_eq!(check(&[b'x'; MAX_LEN]), Ok(()));
        assert_eq!(check(&[b'x'; MAX_LEN + 1]), Err(TopicError::TooLong));
        assert_eq!(check(b"a b"), Err(TopicError::InvalidByte(b' ')));
        assert_eq!(check("é".as_bytes()), Err(TopicError::InvalidByte(0xc3)));
        assert!(TopicError::InvalidByte(1).to_string().contains("0x01"));
    }
}
