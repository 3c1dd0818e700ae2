//! Decisions: default deny, never fail open, obligations, load errors,
//! schema coverage and argument mapping as Cedar sees it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use portcullis_policy::*;
use serde_json::json;

fn engine(text: &str) -> Engine {
    match Engine::from_sources(None, &[("t.cedar".into(), text.into())]) {
        Ok(e) => e,
        Err(e) => panic!("load failed:\n{e}"),
    }
}

struct R {
    principal: PrincipalFacts,
    action: Action,
    resource: ResourceFacts,
    arguments: Option<serde_json::Value>,
    session: SessionFacts,
    risk: i64,
}

impl R {
    fn call(tool: &str) -> R {
        R {
            principal: agent(),
            action: Action::CallTool,
            resource: ResourceFacts::tool("docs", tool),
            arguments: None,
            session: SessionFacts::default(),
            risk: 0,
        }
    }
    fn decide(&self, e: &Engine) -> Decision {
        let req = Request {
            principal: &self.principal,
            action: self.action.clone(),
            resource: &self.resource,
            arguments: self.arguments.as_ref(),
            method: None,
            session: &self.session,
            risk: self.risk,
            argument_findings: &[],
            now_unix: 1_700_000_000,
        };
        let d = e.decide(&req);
        assert_eq!(d, e.decide_unindexed(&req), "index and full set disagree");
        d
    }
}

fn agent() -> PrincipalFacts {
    PrincipalFacts {
        kind: PrincipalKind::Agent {
            spiffe_id: "spiffe://example.org/agent/a".into(),
            trust_domain: String::new(),
        },
        user: None,
        device: None,
        strength: Strength::Certificate,
        segments: vec![],
    }
}

#[test]
fn empty_set_denies() {
    let e = engine("");
    assert_eq!(e.policy_count(), 0);
    let d = R::call("docs__search").decide(&e);
    assert!(!d.allow);
    assert_eq!(d.reason, REASON_NO_PERMIT);
    assert!(d.determining.is_empty());
}

#[test]
fn permit_allows_and_names_itself() {
    let e = engine(
        r#"@id("p1") permit (principal, action == Portcullis::Action::"CallTool", resource == Portcullis::Tool::"docs__search");
           permit (principal, action == Portcullis::Action::"ListTools", resource);"#,
    );
    let d = R::call("docs__search").decide(&e);
    assert!(d.allow, "{d:?}");
    assert_eq!(d.determining, vec!["p1"]);
    assert_eq!(d.reason, REASON_ALLOWED);
    // Another tool: no permit applies.
    assert!(!R::call("docs__other").decide(&e).allow);
    // Unnamed policies carry file:policyN.
    let mut r = R::call("x");
    r.action = Action::ListTools;
    r.resource = ResourceFacts::server("docs");
    assert_eq!(r.decide(&e).determining, vec!["t.cedar:policy1"]);
}

#[test]
fn forbid_wins_with_its_reason() {
    let e = engine(
        r#"permit (principal, action, resource);
           @id("f") @reason("not on weekends")
           forbid (principal, action, resource) when { context.time.weekday >= 6 || true };"#,
    );
    let d = R::call("a").decide(&e);
    assert!(!d.allow);
    assert_eq!(d.determining, vec!["f"]);
    assert_eq!(d.reason, "not on weekends");
}

#[test]
fn erroring_forbid_does_not_fail_open() {
    // Cedar alone would allow: the forbid errors (overflow) and is skipped.
    let e = engine(
        r#"@id("allow-all") permit (principal, action, resource);
           @id("risky") forbid (principal, action, resource) when { context.risk * 4611686018427387904 > 0 };"#,
    );
    let mut r = R::call("a");
    r.risk = 0;
    assert!(r.decide(&e).allow);
    r.risk = 2;
    let d = r.decide(&e);
    assert!(!d.allow, "{d:?}");
    assert_eq!(d.reason, REASON_ERROR);
    assert_eq!(d.determining, vec!["risky"]);
    assert_eq!(d.errors.len(), 1);
    assert!(d.errors[0].starts_with("risky: "), "{:?}", d.errors);
    assert!(d.obligations == Obligations::default());
}

#[test]
fn erroring_permit_denies_too() {
    let e = engine(
        r#"@id("ok") permit (principal, action, resource);
           @id("boom") permit (principal, action, resource) when { context.risk + 9223372036854775807 > 0 };"#,
    );
    let mut r = R::call("a");
    r.risk = 1;
    let d = r.decide(&e);
    assert!(!d.allow);
    assert_eq!(d.determining, vec!["boom"]);
    assert!(d.errors[0].starts_with("boom: "));
}

#[test]
fn obligations_come_from_determining_permits() {
    let e = engine(
        r#"@id("a") @redact("secrets, pii") @rate_class("slow")
           permit (principal, action == Portcullis::Action::"CallTool", resource == Portcullis::Tool::"t");
           @id("b") @redact("pii,cards") @rate_class("fast") @require_approval("Send the invoice?")
           permit (principal, action == Portcullis::Action::"CallTool", resource in Portcullis::Server::"docs");
           @id("c") @redact("never") @require_approval("never")
           permit (principal, action == Portcullis::Action::"CallTool", resource) when { context.risk > 50 };"#,
    );
    let d = R::call("t").decide(&e);
    assert!(d.allow);
    assert_eq!(d.determining, vec!["a", "b"]);
    assert_eq!(d.obligations.redact, vec!["cards", "pii", "secrets"]);
    assert_eq!(d.obligations.rate_class.as_deref(), Some("slow"));
    assert_eq!(
        d.obligations.require_approval.as_deref(),
        Some("Send the invoice?")
    );
    let d = R::call("other").decide(&e);
    assert_eq!(d.determining, vec!["b"]);
    assert_eq!(d.obligations.rate_class.as_deref(), Some("fast"));
}

#[test]
fn inspection_obligations_combine_strictest() {
    let e = engine(
        r#"@id("a") @dlp_block("secrets") @injection("wrap")
           permit (principal, action == Portcullis::Action::"CallTool", resource == Portcullis::Tool::"t");
           @id("b") @dlp_block("pii, secrets") @injection("block")
           permit (principal, action == Portcullis::Action::"CallTool", resource in Portcullis::Server::"docs");
           @id("c") @injection("flag")
           permit (principal, action == Portcullis::Action::"CallTool", resource);"#,
    );
    let d = R::call("t").decide(&e);
    assert_eq!(d.determining, vec!["a", "b", "c"]);
    assert_eq!(d.obligations.dlp_block, vec!["pii", "secrets"]);
    assert_eq!(d.obligations.injection.as_deref(), Some("block"));
    let d = R::call("other").decide(&e);
    assert_eq!(d.obligations.dlp_block, vec!["pii", "secrets"]);
    assert_eq!(d.obligations.injection.as_deref(), Some("block"));
    let e = engine(
        r#"@id("a") @injection("wrap")
           permit (principal, action == Portcullis::Action::"CallTool", resource == Portcullis::Tool::"t");
           @id("c") @injection("flag")
           permit (principal, action == Portcullis::Action::"CallTool", resource);"#,
    );
    assert_eq!(
        R::call("t").decide(&e).obligations.injection.as_deref(),
        Some("wrap")
    );
    assert_eq!(
        R::call("u").decide(&e).obligations.injection.as_deref(),
        Some("flag")
    );
}

#[test]
fn no_obligations_on_deny() {
    let e = engine(
        r#"@redact("pii") permit (principal, action, resource);
           forbid (principal, action, resource) when { context.session.tainted };"#,
    );
    let mut r = R::call("t");
    r.session.tainted = true;
    let d = r.decide(&e);
    assert!(!d.allow);
    assert_eq!(d.obligations, Obligations::default());
}

#[test]
fn obligation_annotations_are_checked_at_load() {
    for bad in [
        r#"@redact("pii") forbid (principal, action, resource);"#,
        r#"@redact("") permit (principal, action, resource);"#,
        r#"@redact("a b") permit (principal, action, resource);"#,
        r#"@dlp_block("a b") permit (principal, action, resource);"#,
        r#"@dlp_block("secrets") forbid (principal, action, resource);"#,
        r#"@injection("ignore") permit (principal, action, resource);"#,
        r#"@injection("block") forbid (principal, action, resource);"#,
        r#"@rate_class("a b") permit (principal, action, resource);"#,
        r#"@require_approval("") permit (principal, action, resource);"#,
        r#"@id("") permit (principal, action, resource);"#,
    ] {
        let err = Engine::from_sources(None, &[("x.cedar".into(), bad.into())]).unwrap_err();
        assert!(err.to_string().starts_with("x.cedar:1:"), "{bad}: {err}");
    }
}

#[test]
fn load_errors_are_located_and_all_listed() {
    let a = "permit (principal, action, resource);\n\npermit (principal, action, resource) when { context.nope };\n";
    let b =
        "// ok\npermit (principal, action, resource)\n  when { resource.labels.contains(1) };\n";
    let err = Engine::from_sources(
        None,
        &[("a.cedar".into(), a.into()), ("b.cedar".into(), b.into())],
    )
    .unwrap_err();
    let lines = err.lines();
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(lines[0].starts_with("a.cedar:3:"), "{lines:#?}");
    assert!(
        lines[0].contains("for policy `a.cedar:policy1`"),
        "{lines:#?}"
    );
    assert!(lines[1].starts_with("b.cedar:3:"), "{lines:#?}");

    let syntax = "permit (principal, action, resource);\npermit (principal action);\nforbid (;\n";
    let err = Engine::from_sources(None, &[("s.cedar".into(), syntax.into())]).unwrap_err();
    let lines = err.lines();
    assert!(lines.len() >= 2, "{lines:#?}");
    assert!(lines[0].starts_with("s.cedar:2:"), "{lines:#?}");
    assert!(
        lines.iter().any(|l| l.starts_with("s.cedar:3:")),
        "{lines:#?}"
    );

    let dup = "@id(\"x\") permit (principal, action, resource);\n@id(\"x\") forbid (principal, action, resource);\n";
    let err = Engine::from_sources(None, &[("d.cedar".into(), dup.into())]).unwrap_err();
    assert!(err.to_string().contains("duplicate policy id `x`"), "{err}");

    let unknown_action = "permit (principal, action == Portcullis::Action::\"Fly\", resource);";
    assert!(Engine::from_sources(None, &[("u.cedar".into(), unknown_action.into())]).is_err());

    // A rule on an argument the shipped schema does not declare can never
    // apply: refused rather than loaded as a forbid that never fires.
    let never = "forbid (principal, action, resource) when { context.arguments has path && context.arguments.path like \"/etc/*\" };";
    let err = Engine::from_sources(None, &[("n.cedar".into(), never.into())]).unwrap_err();
    assert!(err.to_string().starts_with("n.cedar:1:"), "{err}");
    assert!(err.to_string().contains("does not declare"), "{err}");

    let tpl = "permit (principal == ?principal, action, resource);";
    let err = Engine::from_sources(None, &[("t.cedar".into(), tpl.into())]).unwrap_err();
    assert!(
        err.to_string().contains("templates are not supported"),
        "{err}"
    );
}

#[test]
fn load_from_files_and_missing_file() {
    let dir = std::env::temp_dir().join(format!("pc-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("p.cedar");
    std::fs::write(&f, "permit (principal, action, resource);").unwrap();
    let e = Engine::load(None, std::slice::from_ref(&f)).unwrap();
    assert_eq!(e.policy_count(), 1);
    let err = Engine::load(None, &[dir.join("missing.cedar")]).unwrap_err();
    assert!(
        err.to_string().contains("missing.cedar:1:1: cannot read"),
        "{err}"
    );
    let bad_schema = dir.join("s.cedarschema");
    std::fs::write(&bad_schema, "namespace X {\n entity ;\n}").unwrap();
    let err = Engine::load(Some(&bad_schema), &[f]).unwrap_err();
    assert!(err.to_string().contains("s.cedarschema:2:"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn hash_is_stable_and_order_free() {
    let a = (
        "a.cedar".to_string(),
        "permit (principal, action, resource);".to_string(),
    );
    let b = (
        "b.cedar".to_string(),
        "forbid (principal, action, resource) when { context.session.tainted };".to_string(),
    );
    let e1 = Engine::from_sources(None, &[a.clone(), b.clone()]).unwrap();
    let e2 = Engine::from_sources(None, &[b, a.clone()]).unwrap();
    assert_eq!(e1.hash(), e2.hash());
    assert_eq!(e1.hash().len(), 64);
    let e3 = Engine::from_sources(None, &[a]).unwrap();
    assert_ne!(e1.hash(), e3.hash());
}

#[test]
fn every_action_and_resource_kind_evaluates() {
    let e = engine("permit (principal, action, resource) when { context.strength_level >= 0 };");
    let cases: Vec<(&str, bool, Action, ResourceKind)> = vec![
        ("tools/call", false, Action::CallTool, ResourceKind::Tool),
        ("tools/list", false, Action::ListTools, ResourceKind::Server),
        (
            "resources/read",
            false,
            Action::ReadResource,
            ResourceKind::Resource,
        ),
        (
            "resources/list",
            false,
            Action::ListResources,
            ResourceKind::Server,
        ),
        (
            "resources/templates/list",
            false,
            Action::ListResourceTemplates,
            ResourceKind::Server,
        ),
        (
            "resources/subscribe",
            false,
            Action::Subscribe,
            ResourceKind::Resource,
        ),
        (
            "resources/unsubscribe",
            false,
            Action::Subscribe,
            ResourceKind::Resource,
        ),
        (
            "subscriptions/listen",
            false,
            Action::Subscribe,
            ResourceKind::Server,
        ),
        (
            "prompts/get",
            false,
            Action::GetPrompt,
            ResourceKind::Prompt,
        ),
        (
            "prompts/list",
            false,
            Action::ListPrompts,
            ResourceKind::Server,
        ),
        (
            "completion/complete",
            false,
            Action::Complete,
            ResourceKind::Prompt,
        ),
        (
            "logging/setLevel",
            false,
            Action::SetLogLevel,
            ResourceKind::Server,
        ),
        ("ping", false, Action::Ping, ResourceKind::Server),
        ("ping", true, Action::Ping, ResourceKind::Server),
        (
            "server/discover",
            false,
            Action::Discover,
            ResourceKind::Server,
        ),
        ("initialize", false, Action::Discover, ResourceKind::Server),
        (
            "elicitation/create",
            true,
            Action::Elicit,
            ResourceKind::Tool,
        ),
        (
            "sampling/createMessage",
            true,
            Action::Sample,
            ResourceKind::Server,
        ),
        ("roots/list", true, Action::ListRoots, ResourceKind::Server),
        (
            "notifications/cancelled",
            false,
            Action::Notify,
            ResourceKind::Server,
        ),
        (
            "notifications/progress",
            true,
            Action::Notify,
            ResourceKind::Tool,
        ),
        (
            "tasks/get",
            false,
            Action::Other("tasks/get".into()),
            ResourceKind::Server,
        ),
        (
            "roots/list",
            false,
            Action::Other("roots/list".into()),
            ResourceKind::Server,
        ),
        (
            "tools/call",
            true,
            Action::Other("tools/call".into()),
            ResourceKind::Server,
        ),
    ];
    for (method, s2c, action, kind) in cases {
        let a = Action::from_method(method, s2c);
        assert_eq!(a, action, "{method}");
        assert_eq!(ACTION_IDS[a.index()], a.as_str());
        if !matches!(a, Action::Other(_)) {
            assert_eq!(Action::from_id(a.as_str()), Some(a.clone()));
        }
        let mut r = R::call("x");
        r.action = a;
        r.resource.kind = kind;
        for p in principals() {
            r.principal = p;
            let d = r.decide(&e);
            assert!(d.allow, "{method} {kind:?}: {d:?}");
        }
    }
}

fn principals() -> Vec<PrincipalFacts> {
    let mut user = PrincipalFacts {
        kind: PrincipalKind::User {
            iss: "https://login".into(),
            sub: "ann".into(),
            scopes: vec!["mcp".into()],
        },
        strength: Strength::Token,
        ..PrincipalFacts::anonymous()
    };
    user.device = Some(DeviceFacts {
        id: "laptop-1".into(),
        managed: true,
        os: Some("linux".into()),
        patch_age_days: Some(3),
        disk_encrypted: Some(true),
        edr_running: None,
    });
    let mut a = agent();
    a.user = Some(UserClaims {
        iss: "https://login".into(),
        sub: "bob".into(),
        client_id: Some("cli".into()),
        scopes: vec![],
    });
    a.segments = vec!["finance".into()];
    vec![
        agent(),
        a,
        user,
        PrincipalFacts {
            kind: PrincipalKind::Local {
                name: "ann@desktop".into(),
            },
            strength: Strength::Local,
            ..PrincipalFacts::anonymous()
        },
        PrincipalFacts::anonymous(),
    ]
}

#[test]
fn principal_and_context_facts_reach_cedar() {
    let e = engine(
        r#"@id("td") permit (principal is Portcullis::Agent, action, resource) when { principal.trust_domain == "example.org" };
           @id("seg") permit (principal in Portcullis::Segment::"finance", action, resource);
           @id("scope") permit (principal, action, resource) when { context has user && context.user.scopes.contains("mcp") };
           @id("dev") permit (principal, action, resource) when { context.device.verified && context.device.managed && context.device has patch_age_days && context.device.patch_age_days < 7 };
           @id("client") permit (principal, action, resource) when { context has user && context.user has client_id && context.user.client_id == "cli" };
           @id("local") permit (principal == Portcullis::LocalUser::"ann@desktop", action, resource) when { principal.name == "ann@desktop" };
           @id("strength") permit (principal, action, resource) when { context.strength == "anonymous" && context.strength_level == 0 };"#,
    );
    let ps = principals();
    let expect: [&[&str]; 5] = [
        &["td"],
        &["client", "seg", "td"],
        &["dev", "scope"],
        &["local"],
        &["strength"],
    ];
    for (p, want) in ps.into_iter().zip(expect) {
        let mut r = R::call("x");
        r.principal = p;
        assert_eq!(r.decide(&e).determining, want);
    }
}

#[test]
fn resource_facts_reach_cedar() {
    let e = engine(
        r#"@id("seg") permit (principal, action, resource in Portcullis::Segment::"crm");
           @id("srv") permit (principal, action, resource in Portcullis::Server::"docs") when { resource.server == "docs" && resource.name == "docs__x" };
           @id("ro") permit (principal, action, resource is Portcullis::Tool) when { resource has read_only && resource.read_only };
           @id("label") permit (principal, action, resource) when { context.labels.contains("public") && resource.labels.contains("public") };
           @id("session") permit (principal, action, resource) when { context.session.calls > 10 && context.session.labels_read.contains("confidential") };
           @id("time") permit (principal, action, resource) when { context.time.unix == 1700000000 && context.time.hour == 22 && context.time.weekday == 2 && context.method == "tools/call" };"#,
    );
    let mut r = R::call("docs__x");
    assert_eq!(r.decide(&e).determining, vec!["srv", "time"]);
    r.resource.segments = vec!["crm".into()];
    r.resource.labels = vec!["public".into()];
    r.resource.annotations.read_only = Some(true);
    r.session.calls = 11;
    r.session.labels_read = vec!["confidential".into()];
    assert_eq!(
        r.decide(&e).determining,
        vec!["label", "ro", "seg", "session", "srv", "time"]
    );
}

const ARG_SCHEMA_PATCH: &str = "type Arguments = { amount?: decimal, count?: Long, path?: String, big?: String, tiny?: String, nested?: { a: { b: Long } }, tags?: Set<String>, nothing?: {} };";

fn arg_engine(policy: &str) -> Engine {
    let schema = SHIPPED_SCHEMA.replace("type Arguments = {};", ARG_SCHEMA_PATCH);
    assert_ne!(schema, SHIPPED_SCHEMA);
    Engine::from_sources(Some(&schema), &[("a.cedar".into(), policy.into())]).unwrap()
}

#[test]
fn arguments_map_into_cedar() {
    let e = arg_engine(
        r#"@id("amount") permit (principal, action, resource) when { context.arguments has amount && context.arguments.amount.lessThanOrEqual(decimal("10.25")) };
           @id("count") permit (principal, action, resource) when { context.arguments has count && context.arguments.count == 3 };
           @id("path") permit (principal, action, resource) when { context.arguments has path && context.arguments.path like "/srv/*" };
           @id("big") permit (principal, action, resource) when { context.arguments has big && context.arguments.big == "int:18446744073709551615" };
           @id("tiny") permit (principal, action, resource) when { context.arguments has tiny && context.arguments.tiny == "float:0.00001" };
           @id("nested") permit (principal, action, resource) when { context.arguments has nested && context.arguments.nested.a.b == 1 };
           @id("tags") permit (principal, action, resource) when { context.arguments has tags && context.arguments.tags.contains("x") };
           @id("nothing") permit (principal, action, resource) when { context.arguments has nothing && context.arguments.nothing == {} };"#,
    );
    let cases = [
        (json!({"amount": 10.25}), vec!["amount"]),
        (json!({"amount": 10.5}), vec![]),
        (json!({"count": 3}), vec!["count"]),
        (json!({"path": "/srv/a"}), vec!["path"]),
        (json!({"big": 18446744073709551615u64}), vec!["big"]),
        (json!({"tiny": 0.00001}), vec!["tiny"]),
        (json!({"nested": {"a": {"b": 1}}}), vec!["nested"]),
        (json!({"tags": ["x", "y", "x"]}), vec!["tags"]),
        (json!({"nothing": null}), vec!["nothing"]),
        (json!({"unknown": 1.5, "path": "/etc/x"}), vec![]),
    ];
    for (args, want) in cases {
        let mut r = R::call("t");
        r.arguments = Some(args.clone());
        let d = r.decide(&e);
        assert_eq!(d.determining, want, "{args}: {d:?}");
        assert!(d.errors.is_empty(), "{args}: {d:?}");
    }
}

#[test]
fn mistyped_arguments_deny_with_an_error() {
    // The schema says `amount` is a decimal; a float that is not one
    // arrives as a marked string, and the comparison errors: deny.
    let e = arg_engine(
        r#"@id("all") permit (principal, action, resource);
           @id("cap") forbid (principal, action, resource) when { context.arguments has amount && context.arguments.amount.greaterThan(decimal("100.0")) };"#,
    );
    let mut r = R::call("t");
    r.arguments = Some(json!({"amount": 5.5}));
    assert!(r.decide(&e).allow);
    r.arguments = Some(json!({"amount": 1e-9}));
    let d = r.decide(&e);
    assert!(!d.allow);
    assert_eq!(d.determining, vec!["cap"]);
    r.arguments = Some(json!({"amount": "lots"}));
    assert!(!r.decide(&e).allow);
}

#[test]
fn huge_and_deep_arguments_never_panic() {
    let e = engine("permit (principal, action, resource);");
    let mut deep = json!(1);
    for _ in 0..500 {
        deep = json!([deep]);
    }
    let wide: serde_json::Map<String, serde_json::Value> = (0..2000)
        .map(|i| (format!("k{i}"), json!(i as f64 / 7.0)))
        .collect();
    for args in [
        deep,
        serde_json::Value::Object(wide),
        json!("scalar"),
        json!(null),
    ] {
        let mut r = R::call("t");
        r.arguments = Some(args);
        assert!(r.decide(&e).allow);
    }
}
