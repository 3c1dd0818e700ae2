//! The hash-chained, signed, append-only audit log (placeholder).
