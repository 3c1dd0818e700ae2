//! The default policy pack (`policies/default.cedar`): it validates against
//! the shipped schema, and its decision table holds.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::PathBuf;

use portcullis_policy::*;

fn pack() -> Engine {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../policies/default.cedar");
    match Engine::load(None, &[path]) {
        Ok(e) => e,
        Err(e) => panic!("the default pack does not load:\n{e}"),
    }
}

fn who(strength: Strength) -> PrincipalFacts {
    let kind = match strength {
        Strength::Anonymous => PrincipalKind::Anonymous,
        Strength::Local => PrincipalKind::Local {
            name: "dev@local-agent".into(),
        },
        Strength::Token => PrincipalKind::User {
            iss: "https://login".into(),
            sub: "ann".into(),
            scopes: vec![],
        },
        Strength::Certificate | Strength::CertificateAndToken => PrincipalKind::Agent {
            spiffe_id: "spiffe://portcullis.local/agent/dev".into(),
            trust_domain: "portcullis.local".into(),
        },
    };
    PrincipalFacts {
        kind,
        strength,
        ..PrincipalFacts::anonymous()
    }
}

fn thing(kind: ResourceKind, labels: &[&str], destructive: Option<bool>) -> ResourceFacts {
    ResourceFacts {
        kind,
        id: if kind == ResourceKind::Server {
            "demo".into()
        } else {
            "demo__thing".into()
        },
        server: "demo".into(),
        segments: vec![],
        labels: labels.iter().map(|s| s.to_string()).collect(),
        annotations: Annotations {
            destructive,
            ..Annotations::default()
        },
    }
}

fn decide(
    e: &Engine,
    strength: Strength,
    action: Action,
    resource: &ResourceFacts,
    tainted: bool,
) -> Decision {
    let p = who(strength);
    let session = SessionFacts {
        tainted,
        ..SessionFacts::default()
    };
    let req = Request {
        principal: &p,
        action,
        resource,
        arguments: None,
        method: None,
        session: &session,
        risk: 0,
        argument_findings: &[],
        now_unix: 1_700_000_000,
    };
    let d = e.decide(&req);
    assert_eq!(d, e.decide_unindexed(&req));
    assert!(d.errors.is_empty(), "{d:?}");
    d
}

use Strength::*;

const ALL: [Strength; 5] = [Anonymous, Local, Token, Certificate, CertificateAndToken];

#[test]
fn loads_and_is_small() {
    let e = pack();
    assert_eq!(e.policy_count(), 9);
}

#[test]
fn unlabelled_things_are_open_to_everyone() {
    let e = pack();
    let tool = thing(ResourceKind::Tool, &[], None);
    let destructive = thing(ResourceKind::Tool, &[], Some(true));
    let server = thing(ResourceKind::Server, &[], None);
    let resource = thing(ResourceKind::Resource, &[], None);
    let prompt = thing(ResourceKind::Prompt, &[], None);
    for s in ALL {
        for (a, r) in [
            (Action::ListTools, &server),
            (Action::ListResources, &server),
            (Action::ListPrompts, &server),
            (Action::CallTool, &tool),
            (Action::CallTool, &destructive),
            (Action::ReadResource, &resource),
            (Action::GetPrompt, &prompt),
            (Action::Elicit, &server),
            (Action::Sample, &tool),
            (Action::Notify, &server),
            (Action::Ping, &server),
        ] {
            assert!(decide(&e, s, a.clone(), r, false).allow, "{s:?} {a:?}");
        }
    }
    // A tainted session still uses unlabelled tools.
    assert!(decide(&e, Anonymous, Action::CallTool, &tool, true).allow);
}

#[test]
fn confidential_needs_authentication() {
    let e = pack();
    let doc = thing(ResourceKind::Resource, &["confidential"], None);
    let tool = thing(ResourceKind::Tool, &["confidential"], None);
    let d = decide(&e, Anonymous, Action::ReadResource, &doc, false);
    assert!(!d.allow);
    assert_eq!(d.determining, vec!["confidential-needs-authentication"]);
    assert_eq!(d.reason, "this needs an authenticated identity");
    assert!(!decide(&e, Anonymous, Action::CallTool, &tool, false).allow);
    for s in [Local, Token, Certificate, CertificateAndToken] {
        let d = decide(&e, s, Action::ReadResource, &doc, false);
        assert!(d.allow, "{s:?}");
        assert_eq!(d.determining, vec!["default-authenticated"]);
        assert!(decide(&e, s, Action::CallTool, &tool, false).allow, "{s:?}");
    }
}

#[test]
fn egress_is_closed_to_tainted_sessions() {
    let e = pack();
    let egress = thing(ResourceKind::Tool, &["egress"], None);
    for s in [Local, Token, Certificate, CertificateAndToken] {
        assert!(
            decide(&e, s, Action::CallTool, &egress, false).allow,
            "{s:?}"
        );
        let d = decide(&e, s, Action::CallTool, &egress, true);
        assert!(!d.allow, "{s:?}");
        assert_eq!(d.determining, vec!["no-egress-after-confidential"]);
        // Listing it is still fine; only the call is forbidden.
        assert!(
            decide(&e, s, Action::ListTools, &egress, true).allow,
            "{s:?}"
        );
    }
    // Labelled: never for the anonymous developer.
    assert!(!decide(&e, Anonymous, Action::CallTool, &egress, false).allow);
}

#[test]
fn writing_needs_a_token() {
    let e = pack();
    let write = thing(ResourceKind::Tool, &["write"], None);
    let labelled_destructive = thing(ResourceKind::Tool, &["crm"], Some(true));
    let labelled_safe = thing(ResourceKind::Tool, &["crm"], Some(false));
    for s in [Anonymous, Local] {
        let d = decide(&e, s, Action::CallTool, &write, false);
        assert!(!d.allow, "{s:?}");
        assert!(!decide(&e, s, Action::CallTool, &labelled_destructive, false).allow);
    }
    let d = decide(&e, Local, Action::CallTool, &write, false);
    assert_eq!(d.determining, vec!["write-needs-token"]);
    assert_eq!(d.reason, "this tool needs a token or a client certificate");
    assert!(decide(&e, Local, Action::CallTool, &labelled_safe, false).allow);
    for s in [Token, Certificate, CertificateAndToken] {
        assert!(
            decide(&e, s, Action::CallTool, &write, false).allow,
            "{s:?}"
        );
        assert!(decide(&e, s, Action::CallTool, &labelled_destructive, false).allow);
    }
}

/// Decides a call of `tool` by a certificate agent with these argument findings.
fn call_with_findings(e: &Engine, tool: &ResourceFacts, findings: &[&str]) -> Decision {
    let p = who(Certificate);
    let session = SessionFacts::default();
    let findings: Vec<String> = findings.iter().map(|f| f.to_string()).collect();
    let req = Request {
        principal: &p,
        action: Action::CallTool,
        resource: tool,
        arguments: None,
        method: None,
        session: &session,
        risk: 0,
        argument_findings: &findings,
        now_unix: 1_700_000_000,
    };
    let d = e.decide(&req);
    assert_eq!(d, e.decide_unindexed(&req));
    assert!(d.errors.is_empty(), "{d:?}");
    d
}

#[test]
fn metadata_and_disguised_addresses_are_refused_for_every_tool() {
    let e = pack();
    let plain = thing(ResourceKind::Tool, &[], None);
    let egress = thing(ResourceKind::Tool, &["egress"], None);
    for tool in [&plain, &egress] {
        let d = call_with_findings(&e, tool, &["internal-address", "internal-address:high"]);
        assert!(!d.allow);
        assert!(
            d.determining
                .contains(&"no-internal-address-arguments".to_string()),
            "{d:?}"
        );
    }
    // Other high findings are risk, not this rule's business.
    assert!(call_with_findings(&e, &plain, &["path-traversal", "path-traversal:high"]).allow);
    assert!(call_with_findings(&e, &plain, &[]).allow);
}

#[test]
fn tools_that_reach_out_may_not_name_internal_addresses() {
    let e = pack();
    for label in ["egress", "fetch"] {
        let tool = thing(ResourceKind::Tool, &[label], None);
        let d = call_with_findings(&e, &tool, &["internal-address"]);
        assert!(!d.allow, "{label}");
        assert_eq!(d.determining, vec!["no-internal-address-egress"]);
        assert!(call_with_findings(&e, &tool, &[]).allow, "{label}");
    }
    // A loopback URL to an unlabelled tool stays the local developer's choice.
    let plain = thing(ResourceKind::Tool, &[], None);
    assert!(call_with_findings(&e, &plain, &["internal-address"]).allow);
}
