//! Per-request Cedar inputs: the principal, device and resource entities,
//! the context record and the Cedar request. Built once per request, never
//! per policy.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use cedar_policy::{
    Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, RestrictedExpression,
};

use crate::args::arguments_expr;
use crate::facts::{PrincipalKind, Request, ResourceKind, ACTION_IDS};

/// Principal entity types, in index order (see [`principal_index`]).
pub(crate) const PRINCIPAL_TYPES: [&str; 4] = ["Agent", "User", "LocalUser", "Anonymous"];
/// Resource entity types, in index order (see [`resource_index`]).
pub(crate) const RESOURCE_TYPES: [&str; 4] = ["Tool", "Resource", "Prompt", "Server"];
/// The schema namespace.
pub(crate) const NAMESPACE: &str = "Portcullis";

/// Entity type names and action uids, parsed once at load.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    pub principal: Vec<EntityTypeName>,
    pub resource: Vec<EntityTypeName>,
    pub segment: EntityTypeName,
    pub device: EntityTypeName,
    pub actions: Vec<EntityUid>,
}

impl Names {
    pub(crate) fn new() -> Result<Names, String> {
        let ty = |n: &str| {
            EntityTypeName::from_str(&format!("{NAMESPACE}::{n}")).map_err(|e| e.to_string())
        };
        let action_ty = ty("Action")?;
        Ok(Names {
            principal: PRINCIPAL_TYPES
                .iter()
                .map(|n| ty(n))
                .collect::<Result<_, _>>()?,
            resource: RESOURCE_TYPES
                .iter()
                .map(|n| ty(n))
                .collect::<Result<_, _>>()?,
            segment: ty("Segment")?,
            device: ty("Device")?,
            actions: ACTION_IDS
                .iter()
                .map(|a| EntityUid::from_type_name_and_id(action_ty.clone(), EntityId::new(a)))
                .collect(),
        })
    }
}

/// The index of the request principal's entity type in [`PRINCIPAL_TYPES`].
pub(crate) fn principal_index(kind: &PrincipalKind) -> usize {
    match kind {
        PrincipalKind::Agent { .. } => 0,
        PrincipalKind::User { .. } => 1,
        PrincipalKind::Local { .. } => 2,
        PrincipalKind::Anonymous => 3,
    }
}

/// The index of a resource kind in [`RESOURCE_TYPES`].
pub(crate) fn resource_index(kind: ResourceKind) -> usize {
    match kind {
        ResourceKind::Tool => 0,
        ResourceKind::Resource => 1,
        ResourceKind::Prompt => 2,
        ResourceKind::Server => 3,
    }
}

/// Everything Cedar needs for one request, plus the uids the index looks up.
pub(crate) struct Built {
    pub request: cedar_policy::Request,
    pub entities: Entities,
    pub resource_uid: EntityUid,
    /// The resource's parents: its server (unless it is one), its segments.
    pub ancestors: Vec<EntityUid>,
}

fn uid(ty: &EntityTypeName, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(ty.clone(), EntityId::new(id))
}

fn string_set(items: &[String]) -> RestrictedExpression {
    RestrictedExpression::new_set(
        items
            .iter()
            .map(|s| RestrictedExpression::new_string(s.clone())),
    )
}

fn string(s: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(s.to_owned())
}

fn record(fields: Vec<(String, RestrictedExpression)>) -> Result<RestrictedExpression, String> {
    RestrictedExpression::new_record(fields).map_err(|e| e.to_string())
}

/// Seconds since the epoch → (hour 0-23, ISO weekday 1-7), UTC.
pub(crate) fn hour_and_weekday(unix: i64) -> (i64, i64) {
    let days = unix.div_euclid(86_400);
    let hour = unix.rem_euclid(86_400) / 3_600;
    // 1970-01-01 was a Thursday (ISO 4).
    let weekday = (days + 3).rem_euclid(7) + 1;
    (hour, weekday)
}

/// Builds the Cedar request, entities and index keys for `req`.
pub(crate) fn build(
    names: &Names,
    req: &Request<'_>,
    action_entities: Option<&Entities>,
) -> Result<Built, String> {
    let p = req.principal;
    let r = req.resource;

    // Principal.
    let p_type = names
        .principal
        .get(principal_index(&p.kind))
        .ok_or("principal type")?;
    let segments: HashSet<EntityUid> = p.segments.iter().map(|s| uid(&names.segment, s)).collect();
    let (p_id, p_attrs): (String, HashMap<String, RestrictedExpression>) = match &p.kind {
        PrincipalKind::Agent {
            spiffe_id,
            trust_domain,
        } => {
            let td = if trust_domain.is_empty() {
                spiffe_id
                    .strip_prefix("spiffe://")
                    .and_then(|rest| rest.split('/').next())
                    .unwrap_or_default()
            } else {
                trust_domain.as_str()
            };
            (
                spiffe_id.clone(),
                HashMap::from([("trust_domain".to_owned(), string(td))]),
            )
        }
        PrincipalKind::User { iss, sub, .. } => (
            format!("{iss}#{sub}"),
            HashMap::from([
                ("iss".to_owned(), string(iss)),
                ("sub".to_owned(), string(sub)),
            ]),
        ),
        PrincipalKind::Local { name } => (
            name.clone(),
            HashMap::from([("name".to_owned(), string(name))]),
        ),
        PrincipalKind::Anonymous => ("anonymous".to_owned(), HashMap::new()),
    };
    let principal_uid = uid(p_type, &p_id);
    let principal = Entity::new(principal_uid.clone(), p_attrs, segments)
        .map_err(|e| format!("principal entity: {e}"))?;

    // Device.
    let (device_id, mut d_attrs) = match &p.device {
        Some(d) => {
            let mut a = HashMap::from([
                ("verified".to_owned(), RestrictedExpression::new_bool(true)),
                (
                    "managed".to_owned(),
                    RestrictedExpression::new_bool(d.managed),
                ),
            ]);
            if let Some(os) = &d.os {
                a.insert("os".to_owned(), string(os));
            }
            if let Some(n) = d.patch_age_days {
                a.insert(
                    "patch_age_days".to_owned(),
                    RestrictedExpression::new_long(i64::from(n)),
                );
            }
            (d.id.as_str(), a)
        }
        None => (
            "unknown",
            HashMap::from([
                ("verified".to_owned(), RestrictedExpression::new_bool(false)),
                ("managed".to_owned(), RestrictedExpression::new_bool(false)),
            ]),
        ),
    };
    if let Some(d) = &p.device {
        if let Some(b) = d.disk_encrypted {
            d_attrs.insert(
                "disk_encrypted".to_owned(),
                RestrictedExpression::new_bool(b),
            );
        }
        if let Some(b) = d.edr_running {
            d_attrs.insert("edr_running".to_owned(), RestrictedExpression::new_bool(b));
        }
    }
    let device_uid = uid(&names.device, device_id);
    let device = Entity::new(device_uid.clone(), d_attrs, HashSet::new())
        .map_err(|e| format!("device entity: {e}"))?;

    // Resource.
    let r_type = names
        .resource
        .get(resource_index(r.kind))
        .ok_or("resource type")?;
    let resource_uid = uid(r_type, &r.id);
    let mut ancestors = Vec::with_capacity(r.segments.len() + 1);
    if r.kind != ResourceKind::Server && !r.server.is_empty() {
        if let Some(server_ty) = names.resource.get(resource_index(ResourceKind::Server)) {
            ancestors.push(uid(server_ty, &r.server));
        }
    }
    ancestors.extend(r.segments.iter().map(|s| uid(&names.segment, s)));
    let mut r_attrs = HashMap::from([
        ("name".to_owned(), string(&r.id)),
        ("labels".to_owned(), string_set(&r.labels)),
    ]);
    r_attrs.insert(
        "server".to_owned(),
        string(if r.kind == ResourceKind::Server && r.server.is_empty() {
            &r.id
        } else {
            &r.server
        }),
    );
    if r.kind != ResourceKind::Server {
        let a = r.annotations;
        for (key, val) in [
            ("read_only", a.read_only),
            ("destructive", a.destructive),
            ("idempotent", a.idempotent),
            ("open_world", a.open_world),
        ] {
            if let Some(b) = val {
                r_attrs.insert(key.to_owned(), RestrictedExpression::new_bool(b));
            }
        }
    }
    let resource = Entity::new(
        resource_uid.clone(),
        r_attrs,
        ancestors.iter().cloned().collect(),
    )
    .map_err(|e| format!("resource entity: {e}"))?;

    let entities = match action_entities {
        // The three entities are leaves whose parents (segments, the
        // server) are not in the store, so each one's ancestors are exactly
        // its parents: the transitive closure Cedar would compute (a
        // third of the fixed cost of a decision) is already there.
        None => {
            use cedar_policy_core::entities::{
                Entities as CoreEntities, NoEntitiesSchema, TCComputation,
            };
            CoreEntities::from_entities(
                [&principal, &device, &resource]
                    .map(|e| AsRef::<cedar_policy_core::ast::Entity>::as_ref(e).clone()),
                None::<&NoEntitiesSchema>,
                TCComputation::AssumeAlreadyComputed,
                cedar_policy_core::extensions::Extensions::all_available(),
            )
            .map(Entities::from)
            .map_err(|e| format!("entities: {e}"))?
        }
        Some(actions) => actions
            .clone()
            .add_entities([principal, device, resource], None)
            .map_err(|e| format!("entities: {e}"))?,
    };

    // Context.
    let user = match (&p.user, &p.kind) {
        (Some(u), _) => Some((
            u.iss.as_str(),
            u.sub.as_str(),
            &u.scopes,
            u.client_id.as_deref(),
        )),
        (None, PrincipalKind::User { iss, sub, scopes }) => {
            Some((iss.as_str(), sub.as_str(), scopes, None))
        }
        _ => None,
    };
    let (hour, weekday) = hour_and_weekday(req.now_unix);
    let mut ctx: Vec<(String, RestrictedExpression)> = Vec::with_capacity(11);
    ctx.push((
        "method".to_owned(),
        string(req.method.unwrap_or_else(|| req.action.method())),
    ));
    ctx.push(("arguments".to_owned(), arguments_expr(req.arguments)));
    ctx.push(("labels".to_owned(), string_set(&r.labels)));
    ctx.push((
        "device".to_owned(),
        RestrictedExpression::new_entity_uid(device_uid),
    ));
    if let Some((iss, sub, scopes, client_id)) = user {
        let mut f = vec![
            ("iss".to_owned(), string(iss)),
            ("sub".to_owned(), string(sub)),
            ("scopes".to_owned(), string_set(scopes)),
        ];
        if let Some(c) = client_id {
            f.push(("client_id".to_owned(), string(c)));
        }
        ctx.push(("user".to_owned(), record(f)?));
    }
    ctx.push(("strength".to_owned(), string(p.strength.as_str())));
    ctx.push((
        "strength_level".to_owned(),
        RestrictedExpression::new_long(p.strength.level()),
    ));
    ctx.push((
        "time".to_owned(),
        record(vec![
            (
                "unix".to_owned(),
                RestrictedExpression::new_long(req.now_unix),
            ),
            ("hour".to_owned(), RestrictedExpression::new_long(hour)),
            (
                "weekday".to_owned(),
                RestrictedExpression::new_long(weekday),
            ),
        ])?,
    ));
    ctx.push((
        "session".to_owned(),
        record(vec![
            (
                "calls".to_owned(),
                RestrictedExpression::new_long(
                    i64::try_from(req.session.calls).unwrap_or(i64::MAX),
                ),
            ),
            (
                "labels_read".to_owned(),
                string_set(&req.session.labels_read),
            ),
            (
                "tainted".to_owned(),
                RestrictedExpression::new_bool(req.session.tainted),
            ),
        ])?,
    ));
    ctx.push(("risk".to_owned(), RestrictedExpression::new_long(req.risk)));
    ctx.push((
        "argument_findings".to_owned(),
        string_set(req.argument_findings),
    ));
    let context = Context::from_pairs(ctx).map_err(|e| format!("context: {e}"))?;

    let action_uid = names
        .actions
        .get(req.action.index())
        .cloned()
        .ok_or("action")?;
    let request = cedar_policy::Request::new(
        principal_uid,
        action_uid,
        resource_uid.clone(),
        context,
        None,
    )
    .map_err(|e| format!("request: {e}"))?;
    Ok(Built {
        request,
        entities,
        resource_uid,
        ancestors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weekday_and_hour() {
        assert_eq!(hour_and_weekday(0), (0, 4)); // Thu 1970-01-01 00:00
        assert_eq!(hour_and_weekday(1_700_000_000), (22, 2)); // Tue 2023-11-14 22:13
        assert_eq!(hour_and_weekday(-1), (23, 3)); // Wed 1969-12-31 23:59
    }
}
