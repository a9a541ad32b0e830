//! The model's schema: the built-in one (sugar only) and the checks a user's schema must pass so
//! that the entities and context mayfly supplies are exactly what the validator typed against.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use cedar_policy::{
    Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, Request, RestrictedExpression,
    Schema, SchemaFragment,
};

use crate::error::PolicyError;
use crate::text::cedar_string;
use crate::{PrincipalKind, SVID_ACTIONS, TOKEN_ACTION};

/// Workload attributes that are present only when the identity carries them (all `String`), as
/// the built-in schema and the example schema declare them. `issuer` and `subject` are always
/// present. A user's schema may declare fewer, or more (any optional String attribute): mayfly
/// passes on exactly the attributes the schema declares.
pub const WORKLOAD_OPTIONAL_ATTRS: &[&str] = &[
    "namespace",
    "service_account",
    "repository",
    "repository_owner",
    "ref",
    "environment",
    "workflow",
    "actor",
    "project_path",
    "pipeline_source",
    "trust_domain",
];

/// The context record, as a schema type body.
const CONTEXT_TYPE: &str = "{\n  grant_type: String,\n  requested_ttl: Long,\n  source: String,\n  now: Long,\n  client_id: String,\n  actor: String,\n}";

/// Workload attribute names of the built-in schema.
pub(crate) fn builtin_workload_attrs() -> Vec<String> {
    let mut v: Vec<String> = ["issuer", "subject"]
        .iter()
        .chain(WORKLOAD_OPTIONAL_ATTRS)
        .map(|s| (*s).to_string())
        .collect();
    v.sort();
    v
}

/// The declaration of the SVID actions, with the context as the common type `context_type`
/// names (or spelled out).
fn svid_actions_decl(context_type: &str) -> String {
    format!(
        "// The SVID actions (see docs/POLICY.md): principal the workload, resource the trust domain\n// (X.509-SVID) or each requested audience (JWT-SVID).\naction {} appliesTo {{\n  principal: [Workload],\n  resource: [Audience],\n  context: {context_type},\n}};\n",
        SVID_ACTIONS.map(cedar_string).join(", ")
    )
}

/// A user's schema with the SVID actions: unchanged when it declares both; with mayfly's
/// declaration appended when it declares neither (so schemas written before SVID issuance was
/// decided by policy keep loading); refused when it declares only one. The appended text
/// names the schema's `RequestContext` type when it has one that fits, else spells the
/// context out. Positions in the user's text are unchanged.
pub(crate) fn with_svid_actions(
    text: &str,
    schema: &Schema,
    types: &Types,
    file: &str,
) -> Result<Option<(String, Schema)>, PolicyError> {
    let declared: Vec<&str> = SVID_ACTIONS
        .iter()
        .copied()
        .filter(|a| {
            let uid = types.action_uid(a);
            schema.actions().any(|x| x == &uid)
        })
        .collect();
    match declared.len() {
        2 => return Ok(None),
        0 => {}
        _ => {
            return Err(PolicyError::SchemaMismatch {
                file: file.into(),
                message: format!(
                    "only one of the SVID actions is declared (`{}`)",
                    declared.join("`, `")
                ),
                fix: format!(
                    "declare both or neither (then mayfly declares them): {}",
                    svid_actions_fix()
                ),
            });
        }
    }
    for context in ["RequestContext", CONTEXT_TYPE] {
        let extended = format!("{text}\n{}", svid_actions_decl(context));
        if let Ok((parsed, _)) = Schema::from_cedarschema_str(&extended) {
            return Ok(Some((extended, parsed)));
        }
    }
    // The schema lacks what the declaration names; `check_user_schema` says what.
    Ok(None)
}

/// The fix that declares the SVID actions, on one line.
fn svid_actions_fix() -> String {
    format!(
        "declare `action {} appliesTo {{ principal: [Workload], resource: [Audience], context: RequestContext }};`",
        SVID_ACTIONS.map(cedar_string).join(", ")
    )
}

/// The built-in schema used without a policy directory: the three entity types, the context,
/// the actions `token` plus `scopes` (deduplicated, in order), and the SVID actions.
pub fn builtin_schema<'a>(scopes: impl IntoIterator<Item = &'a str>) -> String {
    let mut s = String::from("// mayfly's built-in schema (no policy directory configured).\n");
    s.push_str("entity Client;\nentity Audience;\nentity Workload = {\n  issuer: String,\n  subject: String,\n");
    for a in WORKLOAD_OPTIONAL_ATTRS {
        s.push_str(&format!("  {a}?: String,\n"));
    }
    s.push_str("};\n");
    s.push_str(&format!("type RequestContext = {CONTEXT_TYPE};\n"));
    let mut seen = HashSet::new();
    let mut actions = vec![cedar_string(TOKEN_ACTION)];
    seen.insert(TOKEN_ACTION);
    for sc in scopes {
        if seen.insert(sc) {
            actions.push(cedar_string(sc));
        }
    }
    s.push_str(&format!(
        "action {} appliesTo {{\n  principal: [Client, Workload],\n  resource: [Audience],\n  context: RequestContext,\n}};\n",
        actions.join(", ")
    ));
    s.push_str(&svid_actions_decl("RequestContext"));
    s
}

/// Entity type names of the model, parsed once.
#[derive(Debug, Clone)]
pub(crate) struct Types {
    pub client: EntityTypeName,
    pub workload: EntityTypeName,
    pub audience: EntityTypeName,
    pub action: EntityTypeName,
}

impl Types {
    pub fn new() -> Result<Self, PolicyError> {
        let p = |n: &str| {
            EntityTypeName::from_str(n).map_err(|e| PolicyError::Schema {
                file: "(built in)".into(),
                message: format!("entity type {n}: {e}"),
            })
        };
        Ok(Self {
            client: p("Client")?,
            workload: p("Workload")?,
            audience: p("Audience")?,
            action: p("Action")?,
        })
    }

    pub fn principal(&self, kind: PrincipalKind) -> &EntityTypeName {
        match kind {
            PrincipalKind::Client => &self.client,
            PrincipalKind::Workload => &self.workload,
        }
    }

    pub fn action_uid(&self, name: &str) -> EntityUid {
        EntityUid::from_type_name_and_id(self.action.clone(), EntityId::new(name))
    }
}

/// Parse a schema in Cedar schema syntax.
pub(crate) fn parse(file: &str, text: &str) -> Result<Schema, PolicyError> {
    match Schema::from_cedarschema_str(text) {
        Ok((schema, _warnings)) => Ok(schema),
        Err(e) => {
            let at = crate::text::diag_position(&e, text)
                .map(|(l, c)| format!("{l}:{c}: "))
                .unwrap_or_default();
            Err(PolicyError::Schema {
                file: file.into(),
                message: format!("{at}{}", crate::text::diag_message(&e)),
            })
        }
    }
}

/// The actions the schema declares, by name, with the names of their ancestors (action groups).
pub(crate) fn action_ancestors(
    schema: &Schema,
    types: &Types,
    file: &str,
) -> Result<HashMap<String, Vec<String>>, PolicyError> {
    let entities = schema.action_entities().map_err(|e| PolicyError::Schema {
        file: file.into(),
        message: format!("action hierarchy: {e}"),
    })?;
    let mut out = HashMap::new();
    for uid in schema.actions() {
        if uid.type_name() != &types.action {
            continue;
        }
        let anc = entities
            .ancestors(uid)
            .map(|it| it.map(|a| a.id().unescaped().to_string()).collect())
            .unwrap_or_default();
        out.insert(uid.id().unescaped().to_string(), anc);
    }
    Ok(out)
}

/// Check that a user's schema describes what mayfly supplies: the three entity types without
/// parents, a Workload with `issuer`/`subject` and otherwise only optional String attributes,
/// the `token` action, and for every action mayfly could ask about: principals among
/// Client/Workload, resource Audience, and the context record. Returns the Workload attribute
/// names the schema declares (the ones mayfly passes on).
pub(crate) fn check_user_schema(
    schema: &Schema,
    schema_text: &str,
    types: &Types,
    file: &str,
) -> Result<Vec<String>, PolicyError> {
    let mismatch = |message: String, fix: &str| PolicyError::SchemaMismatch {
        file: file.into(),
        message,
        fix: fix.into(),
    };
    let declared: HashSet<&EntityTypeName> = schema.entity_types().collect();
    for (t, fix) in [
        (&types.client, "declare `entity Client;`"),
        (
            &types.workload,
            "declare `entity Workload = { issuer: String, subject: String, namespace?: String, ... };` (see docs/POLICY.md)",
        ),
        (&types.audience, "declare `entity Audience;`"),
    ] {
        if !declared.contains(t) {
            return Err(mismatch(
                format!(
                    "entity type `{t}` is not declared (mayfly's entity types have no namespace)"
                ),
                fix,
            ));
        }
        if schema.ancestors(t).is_some_and(|mut a| a.next().is_some()) {
            return Err(mismatch(
                format!(
                    "entity type `{t}` is declared `in` other types, but mayfly supplies no parents, so `in` on it could never hold"
                ),
                "drop the `in [...]` and match on attributes instead",
            ));
        }
    }
    let token = types.action_uid(TOKEN_ACTION);
    if !schema.actions().any(|a| a == &token) {
        return Err(mismatch(
            "action `token` is not declared (every issuance asks it first)".into(),
            "declare `action \"token\" appliesTo { principal: [Client, Workload], resource: [Audience], context: RequestContext };`",
        ));
    }
    check_svid_actions(schema, types, file)?;
    // The Workload entity mayfly builds: issuer and subject only, and with every declared
    // attribute, all strings.
    let names = workload_attr_names(schema_text, file)?;
    let minimal = ["issuer".to_string(), "subject".to_string()];
    for attrs in [&minimal[..], &names[..]] {
        let e = probe_workload(types, attrs)?;
        if let Err(err) = Entities::from_entities([e], Some(schema)) {
            return Err(mismatch(
                format!("a Workload as mayfly supplies it does not fit the schema: {err}"),
                "declare `issuer: String, subject: String`, and any other attribute as an optional String (`namespace?: String`; see docs/POLICY.md)",
            ));
        }
    }
    let context = probe_context()?;
    let resource = EntityUid::from_type_name_and_id(types.audience.clone(), EntityId::new("probe"));
    for action in schema.actions() {
        if action.type_name() != &types.action {
            return Err(mismatch(
                format!("action {action} is not of type `Action` (mayfly asks Action::\"...\")"),
                "declare actions outside any namespace",
            ));
        }
        // Action groups (actions nothing applies to) are never asked for themselves.
        let Some(principals) = schema.principals_for_action(action) else {
            continue;
        };
        let principals: Vec<&EntityTypeName> = principals.collect();
        let resources: Vec<&EntityTypeName> = schema
            .resources_for_action(action)
            .map(|r| r.collect())
            .unwrap_or_default();
        if principals.is_empty() && resources.is_empty() {
            continue;
        }
        if let Some(p) = principals
            .iter()
            .find(|p| **p != &types.client && **p != &types.workload)
        {
            return Err(mismatch(
                format!(
                    "action {action} applies to principal type `{p}`; mayfly's principals are Client and Workload"
                ),
                "use `principal: [Client, Workload]` (or one of them)",
            ));
        }
        if resources.iter().any(|r| *r != &types.audience) || resources.is_empty() {
            return Err(mismatch(
                format!("action {action} must apply to resource `Audience` only"),
                "use `resource: [Audience]`",
            ));
        }
        for p in principals {
            let principal = EntityUid::from_type_name_and_id(p.clone(), EntityId::new("probe"));
            if let Err(err) = Request::new(
                principal,
                action.clone(),
                resource.clone(),
                context.clone(),
                Some(schema),
            ) {
                return Err(mismatch(
                    format!(
                        "a request for action {action} as mayfly makes it does not fit the schema: {err}"
                    ),
                    "give the action `context: { grant_type: String, requested_ttl: Long, source: String, now: Long, client_id: String, actor: String }`",
                ));
            }
        }
    }
    Ok(names)
}

/// The SVID actions are declared (mayfly adds them to a schema that has neither) and apply to
/// `Workload`, the principal of their generated permits.
fn check_svid_actions(schema: &Schema, types: &Types, file: &str) -> Result<(), PolicyError> {
    for a in SVID_ACTIONS {
        let uid = types.action_uid(a);
        let (message, fix) = if !schema.actions().any(|x| x == &uid) {
            (
                format!("action `{a}` is not declared, and mayfly could not declare it"),
                svid_actions_fix(),
            )
        } else if !schema
            .principals_for_action(&uid)
            .is_some_and(|mut p| p.any(|t| t == &types.workload))
        {
            (
                format!(
                    "action {uid} must apply to principal `Workload` (the workload an SVID is for)"
                ),
                "use `principal: [Workload]`".to_string(),
            )
        } else {
            continue;
        };
        return Err(PolicyError::SchemaMismatch {
            file: file.into(),
            message,
            fix,
        });
    }
    Ok(())
}

fn probe_workload(types: &Types, names: &[String]) -> Result<Entity, PolicyError> {
    let uid = EntityUid::from_type_name_and_id(types.workload.clone(), EntityId::new("probe"));
    let attrs: HashMap<String, RestrictedExpression> = names
        .iter()
        .map(|n| (n.clone(), RestrictedExpression::new_string("x".into())))
        .collect();
    Entity::new(uid, attrs, HashSet::new()).map_err(|e| PolicyError::Schema {
        file: "(built in)".into(),
        message: format!("probe entity: {e}"),
    })
}

/// The attribute names the schema declares for `Workload` (from its JSON form).
fn workload_attr_names(schema_text: &str, file: &str) -> Result<Vec<String>, PolicyError> {
    let json = SchemaFragment::from_cedarschema_str(schema_text)
        .map_err(|e| e.to_string())
        .and_then(|(f, _)| f.to_json_value().map_err(|e| e.to_string()))
        .map_err(|message| PolicyError::Schema {
            file: file.into(),
            message,
        })?;
    let mut names: Vec<String> = json
        .get("")
        .and_then(|ns| ns.get("entityTypes"))
        .and_then(|t| t.get("Workload"))
        .and_then(|w| w.get("shape"))
        .and_then(|s| s.get("attributes"))
        .and_then(|a| a.as_object())
        .map(|a| a.keys().cloned().collect())
        .unwrap_or_default();
    names.sort();
    Ok(names)
}

fn probe_context() -> Result<Context, PolicyError> {
    crate::engine::context("", 0, "", 0, "", "").map_err(|e| PolicyError::Schema {
        file: "(built in)".into(),
        message: format!("probe context: {e}"),
    })
}
