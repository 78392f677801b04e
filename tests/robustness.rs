//! Slow consumers, floods, faults and hostile input.
