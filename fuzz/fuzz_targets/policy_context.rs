//! Tool-call arguments → Cedar context (`portcullis_policy::args`) over
//! arbitrary JSON: the mapping is total, `map_arguments` and the direct
//! `arguments_expr` agree, every `decimal` literal it makes is one Cedar
//! accepts, and a decision over the shipped default pack with those
//! arguments evaluates without errors and the same with or without the
//! policy index.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use portcullis_policy::args::{arguments_expr, map_arguments, Mapped};
use portcullis_policy::{
    Action, Engine, PrincipalFacts, Request, ResourceFacts, SessionFacts, SHIPPED_SCHEMA,
};
use serde_json::Value;

const DEFAULT_PACK: &str = include_str!("../../policies/default.cedar");

/// Reads `context.arguments` so the mapped values are evaluated, decimals
/// included (with the shipped schema declaring `amount`, as docs/policy.md
/// tells policy authors to do).
const ARGS_POLICY: &str = r#"
@id("fuzz-arguments")
forbid (principal, action, resource)
when { context.arguments has amount && context.arguments.amount == decimal("1.5") };
"#;

fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let sources = [
            ("default.cedar".to_owned(), DEFAULT_PACK.to_owned()),
            ("fuzz.cedar".to_owned(), ARGS_POLICY.to_owned()),
        ];
        let schema = SHIPPED_SCHEMA.replace(
            "type Arguments = {};",
            "type Arguments = { amount?: decimal };",
        );
        assert_ne!(
            schema, SHIPPED_SCHEMA,
            "the schema no longer declares Arguments"
        );
        match Engine::from_sources(Some(&schema), &sources) {
            Ok(e) => e,
            Err(e) => panic!("the default pack does not load: {e}"),
        }
    })
}

fn decimals(m: &Mapped, out: &mut Vec<String>) {
    match m {
        Mapped::Decimal(d) => out.push(d.clone()),
        Mapped::Set(items) => items.iter().for_each(|i| decimals(i, out)),
        Mapped::Record(fields) => fields.iter().for_each(|(_, v)| decimals(v, out)),
        Mapped::Bool(_) | Mapped::Long(_) | Mapped::String(_) => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(args) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let mapped = map_arguments(Some(&args));
    assert_eq!(
        format!("{:?}", mapped.to_expr()),
        format!("{:?}", arguments_expr(Some(&args))),
        "map_arguments and arguments_expr disagree"
    );

    let who = PrincipalFacts::anonymous();
    let tool = ResourceFacts::tool("docs", "docs__search");
    let session = SessionFacts::default();
    let req = Request {
        principal: &who,
        action: Action::from_method("tools/call", false),
        resource: &tool,
        arguments: Some(&args),
        method: None,
        session: &session,
        risk: 0,
        argument_findings: &[],
        now_unix: 1_700_000_000,
    };
    let d = engine().decide(&req);
    assert!(
        d.errors.is_empty(),
        "arguments broke the decision: {:?}",
        d.errors
    );
    let full = engine().decide_unindexed(&req);
    assert_eq!((d.allow, &d.reason), (full.allow, &full.reason));

    // Each decimal alone, as `amount`, reaches Cedar's decimal parser.
    let mut ds = Vec::new();
    decimals(&mapped, &mut ds);
    for lit in ds {
        let Ok(n) = serde_json::from_str::<Value>(&lit) else {
            panic!("decimal literal {lit:?} is not a JSON number");
        };
        let one = serde_json::json!({ "amount": n });
        let r = Request {
            arguments: Some(&one),
            ..req.clone()
        };
        let d = engine().decide(&r);
        assert!(d.errors.is_empty(), "decimal {lit:?}: {:?}", d.errors);
    }
});
