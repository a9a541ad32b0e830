//! Loading: read a directory, parse the schema and the files, generate the sugar, assign ids,
//! read annotations, validate the whole set, then slice it.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;

use cedar_policy::{
    ActionConstraint, Authorizer, Effect, EntityUid, Policy, PolicyId, PolicySet,
    PrincipalConstraint, ResourceConstraint, Schema, ValidationMode, Validator,
};

use crate::dir::SCHEMA_FILE;
use crate::engine::{PolicyEngine, PolicyInfo};
use crate::error::{PolicyError, ValidationProblem};
use crate::fast::SugarIndex;
use crate::schema::{self, Types};
use crate::slice::{Index, Scoped};
use crate::text::{cedar_string, diag_message, diag_position, line_col, parse_ttl};
use crate::{ClientGrant, EntryGrant, PrincipalKind, sugar};

/// One parsed policy with where it came from.
struct Loaded {
    policy: Policy,
    info: PolicyInfo,
    /// The whole text its source positions refer to (its file, or its own text).
    source: usize,
    /// Generated from a client's `audiences`/`scopes`.
    generated: bool,
}

/// Build an engine. `schema_text` is `None` for the built-in schema (sugar only).
pub(crate) fn build(
    schema_text: Option<&str>,
    files: &[(String, String)],
    clients: &[ClientGrant],
    entries: &[EntryGrant],
) -> Result<PolicyEngine, PolicyError> {
    let types = Types::new()?;
    let generated = sugar::generate(clients)?;
    let from_entries = sugar::generate_entries(entries);
    let (schema_file, schema_src) = match schema_text {
        Some(s) => (SCHEMA_FILE.to_string(), s.to_string()),
        None => (
            "(built-in schema)".to_string(),
            schema::builtin_schema(
                clients
                    .iter()
                    .flat_map(|c| c.scopes.iter().map(String::as_str)),
            ),
        ),
    };
    let mut schema = schema::parse(&schema_file, &schema_src)?;
    // The text as written goes into the fingerprint; the one with the SVID actions is checked.
    let mut checked_src = schema_src.clone();
    if schema_text.is_some()
        && let Some((text, extended)) =
            schema::with_svid_actions(&schema_src, &schema, &types, &schema_file)?
    {
        checked_src = text;
        schema = extended;
    }
    let workload_attrs = if schema_text.is_some() {
        check_sugar_in_schema(&schema, &types, &schema_file, &generated)?;
        schema::check_user_schema(&schema, &checked_src, &types, &schema_file)?
    } else {
        schema::builtin_workload_attrs()
    };
    let action_ancestors = schema::action_ancestors(&schema, &types, &schema_file)?;

    let mut sources: Vec<&str> = Vec::new();
    let mut loaded: Vec<Loaded> = Vec::new();
    let mut seen: HashMap<String, String> = HashMap::new();
    for (name, text) in files {
        sources.push(text);
        for l in parse_file(name, text, sources.len() - 1)? {
            remember(&mut seen, &l.info)?;
            loaded.push(l);
        }
    }
    for g in generated.iter().chain(&from_entries) {
        sources.push(&g.text);
        let parsed = match &g.json {
            Some(json) => Policy::from_json(Some(PolicyId::new(&g.id)), json.clone())
                .map_err(|e| e.to_string()),
            None => Policy::parse(Some(PolicyId::new(&g.id)), &g.text).map_err(|e| e.to_string()),
        };
        let policy = parsed.map_err(|e| PolicyError::Internal {
            message: format!("generated policy `{}` does not parse: {e}", g.id),
        })?;
        let info = PolicyInfo {
            id: g.id.clone(),
            origin: g.origin.clone(),
            line: 0,
            forbid: false,
            max_ttl: None,
            text: g.text.clone(),
        };
        remember(&mut seen, &info)?;
        loaded.push(Loaded {
            policy,
            info,
            source: sources.len() - 1,
            generated: true,
        });
    }

    let all = PolicySet::from_policies(loaded.iter().map(|l| l.policy.clone())).map_err(|e| {
        PolicyError::Internal {
            message: format!("assembling the set: {e}"),
        }
    })?;
    let warnings = validate_generated_once(&schema, &all, &loaded, &sources, from_entries.len())?;

    let grouped_actions = grouped_action_entities(&schema, &types, &schema_file)?;
    let scoped: Vec<Scoped> = loaded
        .iter()
        .map(|l| scope_of(&l.policy, &types, &action_ancestors))
        .collect();
    let index = Index::build(&scoped)?;
    let sugar = SugarIndex::build(
        loaded
            .iter()
            .map(|l| (&l.policy, l.info.id.as_str(), l.generated)),
        &types,
    );

    let fingerprint = fingerprint(&schema_src, files, generated.iter().chain(&from_entries));
    let infos: Vec<PolicyInfo> = loaded.into_iter().map(|l| l.info).collect();
    let by_id = infos
        .iter()
        .enumerate()
        .map(|(i, p)| (p.id.clone(), i))
        .collect();
    Ok(PolicyEngine {
        types,
        all,
        index,
        sugar,
        infos,
        by_id,
        grouped_actions,
        workload_attrs,
        fingerprint,
        warnings,
        authorizer: Authorizer::new(),
    })
}

fn remember(seen: &mut HashMap<String, String>, info: &PolicyInfo) -> Result<(), PolicyError> {
    if let Some(first) = seen.get(&info.id) {
        return Err(PolicyError::DuplicateId {
            id: info.id.clone(),
            first: first.clone(),
            second: info.location(),
        });
    }
    seen.insert(info.id.clone(), info.location());
    Ok(())
}

/// The stem of a policy file name: `k8s.cedar` -> `k8s`.
fn stem(name: &str) -> &str {
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    base.strip_suffix(".cedar").unwrap_or(base)
}

fn parse_file(name: &str, text: &str, source: usize) -> Result<Vec<Loaded>, PolicyError> {
    let set = PolicySet::from_str(text).map_err(|e| {
        let (line, column) = e
            .iter()
            .next()
            .and_then(|first| diag_position(first, text))
            .unwrap_or((0, 0));
        let mut message = e
            .iter()
            .next()
            .map(|first| diag_message(first))
            .unwrap_or_else(|| e.to_string());
        let more = e.iter().count().saturating_sub(1);
        if more > 0 {
            message.push_str(&format!(" (and {more} more error(s))"));
        }
        PolicyError::Parse {
            file: name.to_string(),
            line,
            column,
            message,
        }
    })?;
    // The parser names policies `policy0`, `policy1`, ... in file order (templates included).
    let mut ordered: BTreeMap<usize, (bool, String, Option<Policy>)> = BTreeMap::new();
    for p in set.policies() {
        ordered.insert(
            parser_index(p.id()),
            (false, p.to_string(), Some(p.clone())),
        );
    }
    for t in set.templates() {
        ordered.insert(parser_index(t.id()), (true, t.to_string(), None));
    }
    let mut out = Vec::with_capacity(ordered.len());
    let mut cursor = 0;
    for (index, (template, ptext, policy)) in ordered.into_values().enumerate() {
        let start = text
            .get(cursor..)
            .and_then(|rest| rest.find(&ptext))
            .map_or(cursor, |at| cursor + at);
        cursor = start + ptext.len();
        let line = line_col(text, start).0;
        let auto_id = format!("{}:{index}", stem(name));
        let Some(policy) = policy.filter(|_| !template) else {
            return Err(PolicyError::Template {
                file: name.to_string(),
                line,
                id: auto_id,
            });
        };
        let id = match policy.annotation("id") {
            Some("") => {
                return Err(PolicyError::EmptyId {
                    file: name.to_string(),
                    line,
                    index,
                });
            }
            Some(id) => id.to_string(),
            None => auto_id,
        };
        let forbid = policy.effect() == Effect::Forbid;
        let max_ttl = match policy.annotation("max_ttl") {
            None => None,
            Some(v) => {
                let bad = |problem: String| PolicyError::BadMaxTtl {
                    file: name.to_string(),
                    id: id.clone(),
                    value: v.to_string(),
                    problem,
                };
                if forbid {
                    return Err(bad("is on a forbid, where it has no effect".into()));
                }
                Some(parse_ttl(v).map_err(bad)?)
            }
        };
        out.push(Loaded {
            policy: policy.new_id(PolicyId::new(&id)),
            info: PolicyInfo {
                id,
                origin: name.to_string(),
                line,
                forbid,
                max_ttl,
                text: ptext,
            },
            source,
            generated: false,
        });
    }
    Ok(out)
}

fn parser_index(id: &PolicyId) -> usize {
    AsRef::<str>::as_ref(id)
        .strip_prefix("policy")
        .and_then(|n| n.parse().ok())
        .unwrap_or(usize::MAX)
}

fn check_sugar_in_schema(
    schema: &Schema,
    types: &Types,
    file: &str,
    generated: &[sugar::SugarPolicy],
) -> Result<(), PolicyError> {
    let Some(first) = generated.first() else {
        return Ok(());
    };
    let declared: Vec<_> = schema.entity_types().collect();
    for (t, fix) in [
        (&types.client, "declare `entity Client;`"),
        (
            &types.workload,
            "declare `entity Workload = { issuer: String, subject: String, ... };`",
        ),
        (&types.audience, "declare `entity Audience;`"),
    ] {
        if !declared.contains(&t) {
            return Err(PolicyError::SugarNotInSchema {
                file: file.into(),
                client: first.client.clone(),
                what: format!("entity type `{t}`"),
                fix: fix.into(),
            });
        }
    }
    for g in generated {
        for a in &g.actions {
            let uid = types.action_uid(a);
            if !schema.actions().any(|x| x == &uid) {
                return Err(PolicyError::SugarNotInSchema {
                    file: file.into(),
                    client: g.client.clone(),
                    what: format!("action `{a}`"),
                    fix: format!(
                        "declare `action {} appliesTo {{ principal: [Client, Workload], resource: [Audience], context: RequestContext }};` in the schema, or remove the scope from the client",
                        cedar_string(a)
                    ),
                });
            }
        }
    }
    Ok(())
}

/// [`validate`], with the entries' permits (the last `entries` of `loaded`) validated once for
/// all: they differ only in the principal's id, which validation does not look at beyond its
/// type, so one stands for all and a reload with thousands of entries stays cheap.
fn validate_generated_once(
    schema: &Schema,
    all: &PolicySet,
    loaded: &[Loaded],
    sources: &[&str],
    entries: usize,
) -> Result<Vec<String>, PolicyError> {
    let same_shape = entries.saturating_sub(1);
    if same_shape == 0 {
        return validate(schema, all, loaded, sources);
    }
    let checked = loaded.get(..loaded.len() - same_shape).unwrap_or(loaded);
    let set = PolicySet::from_policies(checked.iter().map(|l| l.policy.clone())).map_err(|e| {
        PolicyError::Internal {
            message: format!("assembling the set: {e}"),
        }
    })?;
    validate(schema, &set, checked, sources)
}

/// Strict validation of the whole set; errors refuse it, warnings are returned.
fn validate(
    schema: &Schema,
    all: &PolicySet,
    loaded: &[Loaded],
    sources: &[&str],
) -> Result<Vec<String>, PolicyError> {
    let by_id: HashMap<&str, &Loaded> = loaded.iter().map(|l| (l.info.id.as_str(), l)).collect();
    let locate = |id: &PolicyId, diag: &dyn miette::Diagnostic| -> (String, usize, usize) {
        let Some(l) = by_id.get(AsRef::<str>::as_ref(id)) else {
            return (String::from("?"), 0, 0);
        };
        let (line, column) = sources
            .get(l.source)
            .and_then(|src| diag_position(diag, src))
            .unwrap_or((l.info.line, 0));
        (l.info.origin.clone(), line, column)
    };
    let result = Validator::new(schema.clone()).validate(all, ValidationMode::Strict);
    let problems: Vec<ValidationProblem> = result
        .validation_errors()
        .map(|e| {
            let (file, line, column) = locate(e.policy_id(), e);
            ValidationProblem {
                file,
                line,
                column,
                policy: AsRef::<str>::as_ref(e.policy_id()).to_owned(),
                message: without_policy_prefix(diag_message(e), e.policy_id()),
            }
        })
        .collect();
    if !problems.is_empty() {
        return Err(PolicyError::Validation { problems });
    }
    Ok(result
        .validation_warnings()
        .map(|w| {
            let (file, line, column) = locate(w.policy_id(), w);
            format!(
                "{file}:{line}:{column}: policy `{}`: {}",
                w.policy_id(),
                without_policy_prefix(diag_message(w), w.policy_id())
            )
        })
        .collect())
}

/// Cedar starts its messages with "for policy `id`, "; the problem line names the policy already.
fn without_policy_prefix(message: String, id: &PolicyId) -> String {
    let prefix = format!("for policy `{id}`, ");
    match message.strip_prefix(&prefix) {
        Some(rest) => rest.to_string(),
        None => message,
    }
}

/// Actions that are members of action groups, as entities carrying their ancestors, so that
/// `action in Action::"group"` holds at evaluation.
fn grouped_action_entities(
    schema: &Schema,
    types: &Types,
    file: &str,
) -> Result<HashMap<String, cedar_policy::Entity>, PolicyError> {
    let entities = schema.action_entities().map_err(|e| PolicyError::Schema {
        file: file.into(),
        message: format!("action hierarchy: {e}"),
    })?;
    let mut out = HashMap::new();
    for uid in schema.actions() {
        if uid.type_name() != &types.action {
            continue;
        }
        if entities
            .ancestors(uid)
            .is_some_and(|mut a| a.next().is_some())
            && let Some(e) = entities.get(uid)
        {
            out.insert(uid.id().unescaped().to_string(), e.clone());
        }
    }
    Ok(out)
}

/// What a policy's scope pins (see `slice`).
fn scope_of(policy: &Policy, types: &Types, ancestors: &HashMap<String, Vec<String>>) -> Scoped {
    let name = |uid: &EntityUid| uid.id().unescaped().to_string();
    let expand = |listed: Vec<EntityUid>| -> Option<Vec<String>> {
        // Every listed action itself, and every action whose ancestors include a listed one.
        let listed: Vec<String> = listed
            .iter()
            .filter(|u| u.type_name() == &types.action)
            .map(name)
            .collect();
        let mut out = listed.clone();
        for (action, anc) in ancestors {
            if anc.iter().any(|a| listed.contains(a)) && !out.contains(action) {
                out.push(action.clone());
            }
        }
        Some(out)
    };
    let actions = match policy.action_constraint() {
        ActionConstraint::Any => None,
        ActionConstraint::Eq(a) => expand(vec![a]),
        ActionConstraint::In(list) => expand(list),
    };
    let audience = match policy.resource_constraint() {
        ResourceConstraint::Eq(r) | ResourceConstraint::In(r)
            if r.type_name() == &types.audience =>
        {
            Some(name(&r))
        }
        _ => None,
    };
    let principal = match policy.principal_constraint() {
        PrincipalConstraint::Eq(p) if p.type_name() == &types.client => {
            Some((PrincipalKind::Client, name(&p)))
        }
        PrincipalConstraint::Eq(p) if p.type_name() == &types.workload => {
            Some((PrincipalKind::Workload, name(&p)))
        }
        _ => None,
    };
    Scoped {
        policy: policy.clone(),
        actions,
        audience,
        principal,
        reads_context: reads_context(policy),
    }
}

/// Whether a policy names `context` anywhere (`{"Var": "context"}` in Cedar's JSON form); true
/// when the JSON form is not available.
fn reads_context(policy: &Policy) -> bool {
    fn names_context(v: &serde_json::Value) -> bool {
        match v {
            serde_json::Value::Object(m) => {
                m.get("Var").and_then(|x| x.as_str()) == Some("context")
                    || m.values().any(names_context)
            }
            serde_json::Value::Array(a) => a.iter().any(names_context),
            _ => false,
        }
    }
    policy.to_json().map_or(true, |j| names_context(&j))
}

fn fingerprint<'a>(
    schema: &str,
    files: &[(String, String)],
    generated: impl Iterator<Item = &'a sugar::SugarPolicy>,
) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut part = |label: &str, bytes: &[u8]| {
        ctx.update(label.as_bytes());
        ctx.update(&(bytes.len() as u64).to_be_bytes());
        ctx.update(bytes);
    };
    part("schema", schema.as_bytes());
    for (name, text) in files {
        part("file", name.as_bytes());
        part("text", text.as_bytes());
    }
    for g in generated {
        part("generated", g.text.as_bytes());
    }
    ctx.finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
