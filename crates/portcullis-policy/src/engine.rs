//! The engine: a loaded, validated, indexed policy set and `decide`.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use cedar_policy::{
    ActionConstraint, Authorizer, Entities, EntityUid, Policy, PolicyId, PolicySet,
    PrincipalConstraint, ResourceConstraint, Response,
};

use crate::build::{
    build, principal_index, resource_index, Names, NAMESPACE, PRINCIPAL_TYPES, RESOURCE_TYPES,
};
use crate::facts::{Request, ACTION_IDS};
use crate::load::{load, LoadError, Meta, Problem};

/// What the pipeline must do besides allowing: read from the annotations of
/// the determining `permit` policies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Obligations {
    /// DLP class names to redact from the result (`@redact("secrets,pii")`), sorted, unique.
    pub redact: Vec<String>,
    /// DLP class names whose presence withholds the whole result
    /// (`@dlp_block("secrets")`), sorted, unique.
    pub dlp_block: Vec<String>,
    /// What injection markers in the result do (`@injection("wrap")`:
    /// `flag`, `wrap` or `block`); with several, the strictest.
    pub injection: Option<String>,
    /// The rate class (`@rate_class("slow")`); with several, the first by policy id.
    pub rate_class: Option<String>,
    /// Ask the human first (`@require_approval("message")`); several messages are joined by "; ".
    pub require_approval: Option<String>,
}

/// The outcome of one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// Allowed?
    pub allow: bool,
    /// Why, safe to show the client (no policy text; a forbid's `@reason` if it has one).
    pub reason: String,
    /// The policies that decided (the `@id` annotation, else `file:policyN`), sorted.
    pub determining: Vec<String>,
    /// Evaluation errors as `policy-id: message` (any error denies).
    pub errors: Vec<String>,
    /// Obligations (empty unless allowed).
    pub obligations: Obligations,
}

/// The reason given when no policy permits the request.
pub const REASON_NO_PERMIT: &str = "no policy permits this request";
/// The reason given when a forbid policy matched and has no `@reason`.
pub const REASON_FORBIDDEN: &str = "forbidden by policy";
/// The reason given when any applicable policy failed to evaluate.
pub const REASON_ERROR: &str = "denied: a policy could not be evaluated";
/// The reason given when the request itself could not be built.
pub const REASON_BAD_REQUEST: &str = "denied: the request could not be evaluated";
/// The reason given on allow.
pub const REASON_ALLOWED: &str = "allowed";

/// Policies that can apply to one (action, principal type), by resource scope.
#[derive(Default)]
struct Slice {
    /// `resource` unconstrained.
    any: Option<PolicySet>,
    /// `resource is T`, by [`RESOURCE_TYPES`] index.
    by_type: [Option<PolicySet>; 4],
    /// `resource == U` or `resource in U` (looked up with the request's resource uid).
    at: HashMap<EntityUid, PolicySet>,
    /// `resource in U` (looked up with each of the resource's parents).
    under: HashMap<EntityUid, PolicySet>,
    /// How many policies are in this slice.
    count: usize,
}

/// Slices under construction.
#[derive(Default)]
struct SliceBuilder {
    any: Vec<Policy>,
    by_type: [Vec<Policy>; 4],
    at: HashMap<EntityUid, Vec<Policy>>,
    under: HashMap<EntityUid, Vec<Policy>>,
}

fn set_of(policies: Vec<Policy>) -> Result<Option<PolicySet>, String> {
    if policies.is_empty() {
        return Ok(None);
    }
    PolicySet::from_policies(policies)
        .map(Some)
        .map_err(|e| e.to_string())
}

impl SliceBuilder {
    fn finish(self) -> Result<Slice, String> {
        let mut count = self.any.len();
        let any = set_of(self.any)?;
        let mut by_type: [Option<PolicySet>; 4] = Default::default();
        for (slot, ps) in by_type.iter_mut().zip(self.by_type) {
            count += ps.len();
            *slot = set_of(ps)?;
        }
        let mut at = HashMap::with_capacity(self.at.len());
        for (k, ps) in self.at {
            count += ps.len();
            if let Some(s) = set_of(ps)? {
                at.insert(k, s);
            }
        }
        let mut under = HashMap::with_capacity(self.under.len());
        for (k, ps) in self.under {
            if let Some(s) = set_of(ps)? {
                under.insert(k, s);
            }
        }
        Ok(Slice {
            any,
            by_type,
            at,
            under,
            count,
        })
    }
}

/// The Portcullis policy decision point: an immutable, validated, indexed
/// policy set. `Send + Sync`; hot reload swaps an `Arc<Engine>`.
pub struct Engine {
    hash: String,
    full: PolicySet,
    meta: HashMap<PolicyId, Meta>,
    /// `[action][principal type]`, `ACTION_IDS.len() * 4` slices.
    slices: Vec<Slice>,
    names: Names,
    /// Action entities, only when the schema groups actions.
    action_entities: Option<Entities>,
    authorizer: Authorizer,
    count: usize,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("hash", &self.hash)
            .field("policies", &self.count)
            .finish()
    }
}

fn internal(message: String) -> LoadError {
    LoadError {
        problems: vec![Problem {
            file: "(index)".into(),
            line: 1,
            col: 1,
            message,
        }],
    }
}

/// SHA-256 over the sorted (name, text) pairs, hex.
fn set_hash(sources: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = sources.iter().collect();
    sorted.sort();
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for (name, text) in sorted {
        ctx.update(&(name.len() as u64).to_le_bytes());
        ctx.update(name.as_bytes());
        ctx.update(&(text.len() as u64).to_le_bytes());
        ctx.update(text.as_bytes());
    }
    hex::encode(ctx.finish().as_ref())
}

fn type_index(types: &[&str], ty: &cedar_policy::EntityTypeName) -> Option<usize> {
    let name = ty.to_string();
    let local = name.strip_prefix(NAMESPACE)?.strip_prefix("::")?;
    types.iter().position(|t| *t == local)
}

impl Engine {
    /// Loads policy files, validating each against `schema` (the shipped one when `None`).
    pub fn load(schema: Option<&Path>, files: &[PathBuf]) -> Result<Engine, LoadError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|e| LoadError {
                problems: vec![Problem {
                    file: p.display().to_string(),
                    line: 1,
                    col: 1,
                    message: format!("cannot read: {e}"),
                }],
            })
        };
        let schema_src = match schema {
            Some(p) => Some((p.display().to_string(), read(p)?)),
            None => None,
        };
        let mut sources = Vec::with_capacity(files.len());
        let mut problems = Vec::new();
        for f in files {
            match read(f) {
                Ok(text) => sources.push((f.display().to_string(), text)),
                Err(e) => problems.extend(e.problems),
            }
        }
        if !problems.is_empty() {
            return Err(LoadError { problems });
        }
        Engine::from_named(
            schema_src.as_ref().map(|(n, t)| (n.as_str(), t.as_str())),
            &sources,
        )
    }

    /// Loads policies from `(file name, text)` pairs; `schema` is schema text (the shipped one when `None`).
    pub fn from_sources(
        schema: Option<&str>,
        sources: &[(String, String)],
    ) -> Result<Engine, LoadError> {
        Engine::from_named(schema.map(|t| ("schema", t)), sources)
    }

    fn from_named(
        schema: Option<(&str, &str)>,
        sources: &[(String, String)],
    ) -> Result<Engine, LoadError> {
        let loaded = load(schema, sources)?;
        let names = Names::new().map_err(internal)?;

        // Action hierarchy (custom schemas may group actions).
        let action_entities = loaded
            .schema
            .action_entities()
            .map_err(|e| internal(e.to_string()))?;
        let mut grouped = false;
        let action_ancestors: Vec<HashSet<EntityUid>> = names
            .actions
            .iter()
            .map(|a| {
                let set: HashSet<EntityUid> = action_entities
                    .ancestors(a)
                    .map(|it| it.cloned().collect())
                    .unwrap_or_default();
                grouped |= !set.is_empty();
                set
            })
            .collect();

        let n_p = PRINCIPAL_TYPES.len();
        let mut builders: Vec<SliceBuilder> = (0..ACTION_IDS.len() * n_p)
            .map(|_| SliceBuilder::default())
            .collect();
        for policy in &loaded.policies {
            // Actions this policy can apply to.
            let actions: Vec<usize> = match policy.action_constraint() {
                ActionConstraint::Any => (0..ACTION_IDS.len()).collect(),
                ActionConstraint::Eq(uid) => names
                    .actions
                    .iter()
                    .position(|a| *a == uid)
                    .into_iter()
                    .collect(),
                ActionConstraint::In(uids) => names
                    .actions
                    .iter()
                    .zip(&action_ancestors)
                    .enumerate()
                    .filter(|(_, (a, anc))| uids.iter().any(|u| u == *a || anc.contains(u)))
                    .map(|(i, _)| i)
                    .collect(),
            };
            // Principal types it can apply to.
            let ptypes: Vec<usize> = match policy.principal_constraint() {
                PrincipalConstraint::Any | PrincipalConstraint::In(_) => (0..n_p).collect(),
                PrincipalConstraint::Eq(uid) => type_index(&PRINCIPAL_TYPES, uid.type_name())
                    .into_iter()
                    .collect(),
                PrincipalConstraint::Is(ty) | PrincipalConstraint::IsIn(ty, _) => {
                    type_index(&PRINCIPAL_TYPES, &ty).into_iter().collect()
                }
            };
            let resource = policy.resource_constraint();
            for a in &actions {
                for p in &ptypes {
                    let Some(b) = builders.get_mut(a * n_p + p) else {
                        continue;
                    };
                    match &resource {
                        ResourceConstraint::Any => b.any.push(policy.clone()),
                        ResourceConstraint::Is(ty) => {
                            if let Some(slot) =
                                type_index(&RESOURCE_TYPES, ty).and_then(|i| b.by_type.get_mut(i))
                            {
                                slot.push(policy.clone());
                            }
                        }
                        ResourceConstraint::Eq(uid) => {
                            b.at.entry(uid.clone()).or_default().push(policy.clone())
                        }
                        ResourceConstraint::In(uid) | ResourceConstraint::IsIn(_, uid) => {
                            b.at.entry(uid.clone()).or_default().push(policy.clone());
                            b.under.entry(uid.clone()).or_default().push(policy.clone());
                        }
                    }
                }
            }
        }
        let slices = builders
            .into_iter()
            .map(SliceBuilder::finish)
            .collect::<Result<Vec<_>, _>>()
            .map_err(internal)?;
        let full = PolicySet::from_policies(loaded.policies.iter().cloned())
            .map_err(|e| internal(e.to_string()))?;
        Ok(Engine {
            hash: set_hash(sources),
            count: loaded.policies.len(),
            full,
            meta: loaded.meta,
            slices,
            names,
            action_entities: grouped.then_some(action_entities),
            authorizer: Authorizer::new(),
        })
    }

    /// SHA-256 (hex) of the policy set: over the sorted file names and texts.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// How many policies the set holds.
    pub fn policy_count(&self) -> usize {
        self.count
    }

    /// How many policies the index would evaluate for `req` (for tests and `explain`).
    pub fn candidate_count(&self, req: &Request<'_>) -> usize {
        match build(&self.names, req, None) {
            Ok(b) => self
                .candidates(req, &b)
                .map(PolicySet::num_of_policies)
                .sum(),
            Err(_) => 0,
        }
    }

    /// How many policies the slice for `req`'s action and principal type holds.
    pub fn slice_len(&self, req: &Request<'_>) -> usize {
        self.slice(req).map_or(0, |s| s.count)
    }

    fn slice(&self, req: &Request<'_>) -> Option<&Slice> {
        self.slices
            .get(req.action.index() * PRINCIPAL_TYPES.len() + principal_index(&req.principal.kind))
    }

    /// The policy sets that can apply to `req` (pairwise disjoint).
    fn candidates<'s>(
        &'s self,
        req: &Request<'_>,
        built: &'s crate::build::Built,
    ) -> impl Iterator<Item = &'s PolicySet> + 's {
        let slice = self.slice(req);
        let kind = resource_index(req.resource.kind);
        let at = slice.and_then(|s| s.at.get(&built.resource_uid));
        let under = built
            .ancestors
            .iter()
            .filter_map(move |u| slice.and_then(|s| s.under.get(u)));
        let by_type = slice.and_then(|s| s.by_type.get(kind).and_then(Option::as_ref));
        let any = slice.and_then(|s| s.any.as_ref());
        at.into_iter().chain(under).chain(by_type).chain(any)
    }

    /// Decides `req` with the index: only policies whose scope can match are evaluated.
    pub fn decide(&self, req: &Request<'_>) -> Decision {
        let built = match build(&self.names, req, self.action_entities.as_ref()) {
            Ok(b) => b,
            Err(e) => return bad_request(e),
        };
        let mut acc = Acc::default();
        for set in self.candidates(req, &built) {
            acc.add(
                self.authorizer
                    .is_authorized(&built.request, set, &built.entities),
            );
        }
        acc.finish(&self.meta)
    }

    /// Decides `req` against the whole set, without the index (the reference the index is tested against).
    pub fn decide_unindexed(&self, req: &Request<'_>) -> Decision {
        let built = match build(&self.names, req, self.action_entities.as_ref()) {
            Ok(b) => b,
            Err(e) => return bad_request(e),
        };
        let mut acc = Acc::default();
        acc.add(
            self.authorizer
                .is_authorized(&built.request, &self.full, &built.entities),
        );
        acc.finish(&self.meta)
    }
}

fn bad_request(e: String) -> Decision {
    Decision {
        allow: false,
        reason: REASON_BAD_REQUEST.into(),
        determining: Vec::new(),
        errors: vec![format!("request: {e}")],
        obligations: Obligations::default(),
    }
}

/// Cedar's per-set answers, combined: any error denies, any satisfied
/// forbid denies, else any satisfied permit allows, else deny.
#[derive(Default)]
struct Acc {
    forbids: BTreeSet<PolicyId>,
    permits: BTreeSet<PolicyId>,
    errored: BTreeSet<PolicyId>,
    errors: Vec<String>,
}

impl Acc {
    fn add(&mut self, resp: Response) {
        let d = resp.diagnostics();
        for e in d.errors() {
            let cedar_policy::AuthorizationError::PolicyEvaluationError(pe) = e;
            self.errored.insert(pe.policy_id().clone());
            self.errors.push(format!(
                "{}: {}",
                AsRef::<str>::as_ref(pe.policy_id()),
                pe.inner()
            ));
        }
        let target = match resp.decision() {
            cedar_policy::Decision::Allow => &mut self.permits,
            cedar_policy::Decision::Deny => &mut self.forbids,
        };
        target.extend(d.reason().cloned());
    }

    fn finish(mut self, meta: &HashMap<PolicyId, Meta>) -> Decision {
        // Policy ids are the display ids already (`@id` or `file:policyN`).
        let ids = |s: &BTreeSet<PolicyId>| {
            s.iter()
                .map(|id| AsRef::<str>::as_ref(id).to_owned())
                .collect::<Vec<_>>()
        };
        if !self.errors.is_empty() {
            self.errors.sort();
            let mut determining: BTreeSet<PolicyId> = self.errored;
            determining.extend(self.forbids);
            return Decision {
                allow: false,
                reason: REASON_ERROR.into(),
                determining: ids(&determining),
                errors: self.errors,
                obligations: Obligations::default(),
            };
        }
        if !self.forbids.is_empty() {
            let reason = self
                .forbids
                .iter()
                .find_map(|id| meta.get(id).and_then(|m| m.reason.clone()))
                .unwrap_or_else(|| REASON_FORBIDDEN.into());
            return Decision {
                allow: false,
                reason,
                determining: ids(&self.forbids),
                errors: Vec::new(),
                obligations: Obligations::default(),
            };
        }
        if self.permits.is_empty() {
            return Decision {
                allow: false,
                reason: REASON_NO_PERMIT.into(),
                ..Decision::default()
            };
        }
        let mut ob = Obligations::default();
        let mut approvals: Vec<&str> = Vec::new();
        for id in &self.permits {
            let Some(m) = meta.get(id) else { continue };
            ob.redact.extend(m.redact.iter().cloned());
            ob.dlp_block.extend(m.dlp_block.iter().cloned());
            if let Some(i) = &m.injection {
                let rank = |a: &str| crate::load::INJECTION_ACTIONS.iter().position(|x| *x == a);
                if ob.injection.as_deref().map(rank) < Some(rank(i)) {
                    ob.injection = Some(i.clone());
                }
            }
            if ob.rate_class.is_none() {
                ob.rate_class.clone_from(&m.rate_class);
            }
            if let Some(a) = &m.require_approval {
                if !approvals.contains(&a.as_str()) {
                    approvals.push(a);
                }
            }
        }
        ob.redact.sort();
        ob.redact.dedup();
        ob.dlp_block.sort();
        ob.dlp_block.dedup();
        if !approvals.is_empty() {
            ob.require_approval = Some(approvals.join("; "));
        }
        Decision {
            allow: true,
            reason: REASON_ALLOWED.into(),
            determining: ids(&self.permits),
            errors: Vec::new(),
            obligations: ob,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn engine_is_send_and_sync() {
        assert_send_sync::<Engine>();
    }

    #[test]
    fn hash_is_order_independent() {
        let a = ("a".to_string(), "x".to_string());
        let b = ("b".to_string(), "y".to_string());
        assert_eq!(set_hash(&[a.clone(), b.clone()]), set_hash(&[b, a]));
        assert_ne!(
            set_hash(&[("ab".into(), "c".into())]),
            set_hash(&[("a".into(), "bc".into())])
        );
    }
}
