//! MCP protocol revisions and how the gateway picks one per peer.

use std::fmt;

/// A protocol revision the gateway speaks, on either side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Revision {
    /// Handshake era, first Streamable HTTP revision (batches allowed).
    V2025_03_26,
    /// Handshake era; adds elicitation and structured tool output.
    V2025_06_18,
    /// Handshake era; the last one with `initialize`.
    V2025_11_25,
    /// Stateless: one self-contained request per POST, no sessions.
    V2026_07_28,
}

impl Revision {
    /// Every revision, oldest first.
    pub const ALL: [Revision; 4] = [
        Revision::V2025_03_26,
        Revision::V2025_06_18,
        Revision::V2025_11_25,
        Revision::V2026_07_28,
    ];
    /// The newest handshake-era revision: what the gateway offers upstream
    /// when it must open a session itself.
    pub const LATEST_HANDSHAKE: Revision = Revision::V2025_11_25;

    /// The revision's date string as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Revision::V2025_03_26 => "2025-03-26",
            Revision::V2025_06_18 => "2025-06-18",
            Revision::V2025_11_25 => "2025-11-25",
            Revision::V2026_07_28 => "2026-07-28",
        }
    }

    /// Parses a wire date string; unknown strings are `None`.
    pub fn parse(s: &str) -> Option<Revision> {
        Revision::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Whether this revision uses `initialize` and `Mcp-Session-Id`.
    pub fn is_handshake(self) -> bool {
        self != Revision::V2026_07_28
    }

    /// Whether JSON-RPC batches are allowed (only 2025-03-26).
    pub fn allows_batch(self) -> bool {
        self == Revision::V2025_03_26
    }

    /// What the gateway answers to a client's `initialize` asking for
    /// `requested`: the same revision if it is a handshake one we speak,
    /// otherwise the newest handshake revision (the client may then
    /// disconnect, as the spec allows).
    pub fn negotiate_handshake(requested: &str) -> Revision {
        match Revision::parse(requested) {
            Some(r) if r.is_handshake() => r,
            _ => Revision::LATEST_HANDSHAKE,
        }
    }

    /// The wire strings of every revision, for `supportedVersions` lists.
    pub fn all_strs() -> Vec<&'static str> {
        Revision::ALL.iter().map(|r| r.as_str()).collect()
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_negotiates() {
        for r in Revision::ALL {
            assert_eq!(Revision::parse(r.as_str()), Some(r));
        }
        assert_eq!(
            Revision::negotiate_handshake("2025-06-18"),
            Revision::V2025_06_18
        );
        assert_eq!(
            Revision::negotiate_handshake("2024-11-05"),
            Revision::V2025_11_25
        );
        assert_eq!(
            Revision::negotiate_handshake("2026-07-28"),
            Revision::V2025_11_25
        );
        assert!(Revision::V2025_03_26.allows_batch());
        assert!(!Revision::V2026_07_28.is_handshake());
    }
}
