//! Sources for `mayfly scan` (being written).
