//! Micro-segmentation: config groups servers, tools, resources and prompts
//! into named segments carrying labels (`confidential`, `egress`, `write`,
//! …). Policy sees each item's segments and labels; the gateway taints a
//! session that reads anything labelled with a taint label.

use serde::Deserialize;

/// One segment from config.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentCfg {
    /// The segment's name (a Cedar `Segment` entity id).
    pub name: String,
    /// Labels every member carries.
    #[serde(default)]
    pub labels: Vec<String>,
    /// Upstreams whose every tool, resource and prompt is a member.
    #[serde(default)]
    pub servers: Vec<String>,
    /// Tools, by client-facing name (`server__tool`).
    #[serde(default)]
    pub tools: Vec<String>,
    /// Resources, by URI prefix.
    #[serde(default)]
    pub resources: Vec<String>,
    /// Prompts, by client-facing name.
    #[serde(default)]
    pub prompts: Vec<String>,
    /// DLP on its members' results, per class; replaces `[inspection]
    /// results` for the classes it names.
    #[serde(default)]
    pub dlp: std::collections::BTreeMap<String, crate::inspection::ClassAction>,
    /// DLP on the arguments of calls to its tools, per class.
    #[serde(default)]
    pub dlp_arguments: std::collections::BTreeMap<String, crate::inspection::ClassAction>,
    /// What injection markers in its members' results do.
    #[serde(default)]
    pub injection: Option<crate::inspection::InjectionAction>,
}

/// What kind of item is being classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemKind {
    /// A tool (by client-facing name).
    Tool,
    /// A resource (by URI).
    Resource,
    /// A prompt (by client-facing name).
    Prompt,
    /// A whole server.
    Server,
}

/// Segment memberships and labels of one item.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Class {
    /// Names of the segments the item is in.
    pub segments: Vec<String>,
    /// Union of their labels, sorted, without duplicates.
    pub labels: Vec<String>,
}

/// All segments, for lookups.
#[derive(Debug, Clone, Default)]
pub struct Segments {
    segs: Vec<SegmentCfg>,
}

impl Segments {
    /// Wraps the configured segments.
    pub fn new(segs: Vec<SegmentCfg>) -> Segments {
        Segments { segs }
    }

    /// The segments and labels of `name` (a tool or prompt's client-facing
    /// name, a resource URI, or a server name) offered by `server`.
    pub fn classify(&self, server: &str, kind: ItemKind, name: &str) -> Class {
        let mut c = Class::default();
        for s in &self.segs {
            let member = s.servers.iter().any(|x| x == server)
                || match kind {
                    ItemKind::Tool => s.tools.iter().any(|t| t == name),
                    ItemKind::Prompt => s.prompts.iter().any(|p| p == name),
                    ItemKind::Resource => s.resources.iter().any(|p| name.starts_with(p.as_str())),
                    ItemKind::Server => false,
                };
            if member {
                c.segments.push(s.name.clone());
                c.labels.extend(s.labels.iter().cloned());
            }
        }
        c.labels.sort();
        c.labels.dedup();
        c
    }

    /// Every label any segment gives (sorted, once each): what a session
    /// can have read.
    pub fn all_labels(&self) -> Vec<String> {
        let mut v: Vec<String> = self.segs.iter().flat_map(|s| s.labels.clone()).collect();
        v.sort();
        v.dedup();
        v
    }

    /// Whether any segment is configured.
    pub fn is_empty(&self) -> bool {
        self.segs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(name: &str, labels: &[&str]) -> SegmentCfg {
        SegmentCfg {
            name: name.into(),
            labels: labels.iter().map(|l| l.to_string()).collect(),
            servers: vec![],
            tools: vec![],
            resources: vec![],
            prompts: vec![],
            ..SegmentCfg::default()
        }
    }

    #[test]
    fn classifies_by_server_name_and_prefix() {
        let mut a = seg("secrets", &["confidential"]);
        a.tools = vec!["demo__read_secret".into()];
        a.resources = vec!["vault://".into()];
        let mut b = seg("outbound", &["egress", "confidential"]);
        b.servers = vec!["web".into()];
        let s = Segments::new(vec![a, b]);
        assert_eq!(
            s.classify("demo", ItemKind::Tool, "demo__read_secret")
                .labels,
            vec!["confidential"]
        );
        assert_eq!(
            s.classify("demo", ItemKind::Tool, "demo__echo"),
            Class::default()
        );
        let w = s.classify("web", ItemKind::Tool, "web__fetch");
        assert_eq!(w.segments, vec!["outbound"]);
        assert_eq!(w.labels, vec!["confidential", "egress"]);
        assert_eq!(
            s.classify("x", ItemKind::Resource, "vault://k/1").segments,
            vec!["secrets"]
        );
    }
}
