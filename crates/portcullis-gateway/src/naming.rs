//! Client-facing names: `<server>__<tool>` unless renamed in config, and
//! the reverse lookup that routes a call to the upstream that owns it.

use std::collections::BTreeMap;

/// Separator between server and tool in client-facing names.
pub const SEP: &str = "__";

/// Name mapping for every upstream, built once from config.
#[derive(Debug, Default, Clone)]
pub struct Naming {
    names: Vec<String>,
    renames: Vec<BTreeMap<String, String>>,
    reverse: BTreeMap<String, (usize, String)>,
    transparent: bool,
}

impl Naming {
    /// Builds the mapping from `(upstream name, renames)` pairs.
    pub fn new<'a>(
        upstreams: impl Iterator<Item = (&'a str, &'a BTreeMap<String, String>)>,
    ) -> Self {
        let mut n = Naming::default();
        for (i, (name, renames)) in upstreams.enumerate() {
            n.names.push(name.to_owned());
            for (orig, new) in renames {
                n.reverse.insert(new.clone(), (i, orig.clone()));
            }
            n.renames.push(renames.clone());
        }
        n
    }

    /// Names pass unchanged (one upstream behind `wrap`): the local client
    /// sees the server's own names.
    pub fn transparent(mut self) -> Self {
        self.transparent = self.names.len() == 1;
        self
    }

    /// The client-facing name of `item` offered by upstream `idx`.
    pub fn outward(&self, idx: usize, item: &str) -> String {
        if self.transparent {
            return item.to_owned();
        }
        if let Some(new) = self.renames.get(idx).and_then(|r| r.get(item)) {
            return new.clone();
        }
        let server = self.names.get(idx).map(String::as_str).unwrap_or("");
        format!("{server}{SEP}{item}")
    }

    /// The upstream and original name behind a client-facing name.
    pub fn inward(&self, client_name: &str) -> Option<(usize, String)> {
        if self.transparent {
            return (!client_name.is_empty()).then(|| (0, client_name.to_owned()));
        }
        if let Some(hit) = self.reverse.get(client_name) {
            return Some(hit.clone());
        }
        let (server, item) = client_name.split_once(SEP)?;
        let idx = self.names.iter().position(|n| n == server)?;
        // A renamed item is reachable only by its new name.
        if item.is_empty() || self.renames.get(idx).is_some_and(|r| r.contains_key(item)) {
            return None;
        }
        Some((idx, item.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let r0 = BTreeMap::new();
        let r1 = BTreeMap::from([("echo".to_string(), "say".to_string())]);
        let n = Naming::new([("a", &r0), ("b", &r1)].into_iter());
        assert_eq!(n.outward(0, "echo"), "a__echo");
        assert_eq!(n.outward(1, "echo"), "say");
        assert_eq!(n.inward("a__echo"), Some((0, "echo".into())));
        assert_eq!(n.inward("a__x__y"), Some((0, "x__y".into())));
        assert_eq!(n.inward("say"), Some((1, "echo".into())));
        assert_eq!(n.inward("b__echo"), None);
        assert_eq!(n.inward("c__echo"), None);
        assert_eq!(n.inward("echo"), None);
        assert_eq!(n.inward("a__"), None);
        let one = Naming::new([("a", &r0)].into_iter()).transparent();
        assert_eq!(one.outward(0, "echo"), "echo");
        assert_eq!(one.inward("echo"), Some((0, "echo".into())));
    }
}
