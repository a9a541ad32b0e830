//! Every key the config accepts, read from the file's own types: a serde deserializer that walks
//! `RawConfig` and records the field names serde would accept (the same lists
//! `deny_unknown_fields` checks). The reference file `conf/mayfly.full.toml` and the `MAYFLY_*`
//! override list are both held to it, so a new key without documentation or an override fails.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::value::{Error, StrDeserializer};
use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor};

use crate::raw::RawConfig;

/// What a key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A value (string, number, list of values, or a map of free-form names).
    Value,
    /// A table of known keys (`[pool]`, `inject = { ... }`).
    Table,
    /// An array of tables of known keys (`[[clients]]`).
    Tables,
}

/// Every accepted key by dotted path (`pool.max_connections`, `proxy.routes.inject.header`;
/// array elements add no index).
pub(crate) fn accepted() -> Result<BTreeMap<String, Kind>, Error> {
    let mut out = BTreeMap::new();
    RawConfig::deserialize(Walker {
        path: String::new(),
        in_list: false,
        out: &mut out,
    })?;
    Ok(out)
}

struct Walker<'a> {
    path: String,
    /// Walking a list's element: a table here makes the key an array of tables.
    in_list: bool,
    out: &'a mut BTreeMap<String, Kind>,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

impl<'de> de::Deserializer<'de> for Walker<'_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_str("")
    }
    fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_bool(false)
    }
    fn deserialize_i8<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_u8(0)
    }
    fn deserialize_i16<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_u8(0)
    }
    fn deserialize_i32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_u8(0)
    }
    fn deserialize_i64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_u8(0)
    }
    fn deserialize_u8<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_u8(0)
    }
    fn deserialize_u16<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_u8(0)
    }
    fn deserialize_u32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_u8(0)
    }
    fn deserialize_u64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_u8(0)
    }
    fn deserialize_f32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_f64(0.0)
    }
    fn deserialize_f64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_f64(0.0)
    }
    fn deserialize_char<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_char('x')
    }
    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_str("")
    }
    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_str("")
    }
    fn deserialize_bytes<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_bytes(&[])
    }
    fn deserialize_byte_buf<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_bytes(&[])
    }
    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_some(self)
    }
    fn deserialize_unit<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_unit()
    }
    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        v: V,
    ) -> Result<V::Value, Error> {
        v.visit_unit()
    }
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        v: V,
    ) -> Result<V::Value, Error> {
        v.visit_newtype_struct(self)
    }
    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_seq(OneElement {
            walker: Some(Walker {
                in_list: true,
                ..self
            }),
        })
    }
    fn deserialize_tuple<V: Visitor<'de>>(self, _: usize, v: V) -> Result<V::Value, Error> {
        self.deserialize_seq(v)
    }
    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: usize,
        v: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(v)
    }
    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        // A map of free-form names (attributes, required claims): no known keys inside.
        v.visit_map(Fields {
            path: self.path,
            fields: &[],
            next: 0,
            out: self.out,
        })
    }
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Error> {
        if !self.path.is_empty() {
            let kind = if self.in_list {
                Kind::Tables
            } else {
                Kind::Table
            };
            self.out.insert(self.path.clone(), kind);
        }
        for f in fields {
            self.out.entry(join(&self.path, f)).or_insert(Kind::Value);
        }
        v.visit_map(Fields {
            path: self.path,
            fields,
            next: 0,
            out: self.out,
        })
    }
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Error> {
        let first: StrDeserializer<'_, Error> =
            variants.first().copied().unwrap_or("").into_deserializer();
        v.visit_enum(first)
    }
    fn deserialize_identifier<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_str("")
    }
    fn deserialize_ignored_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_unit()
    }
}

/// A list with one element, so the element type is walked once.
struct OneElement<'a> {
    walker: Option<Walker<'a>>,
}

impl<'de> SeqAccess<'de> for OneElement<'_> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        match self.walker.take() {
            Some(w) => seed.deserialize(w).map(Some),
            None => Ok(None),
        }
    }
}

/// A struct's fields, each walked once with its own path.
struct Fields<'a> {
    path: String,
    fields: &'static [&'static str],
    next: usize,
    out: &'a mut BTreeMap<String, Kind>,
}

impl<'de> MapAccess<'de> for Fields<'_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some(f) = self.fields.get(self.next) else {
            return Ok(None);
        };
        let key: StrDeserializer<'_, Error> = f.into_deserializer();
        seed.deserialize(key).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let f = self.fields.get(self.next).copied().unwrap_or("");
        self.next += 1;
        seed.deserialize(Walker {
            path: join(&self.path, f),
            in_list: false,
            out: self.out,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::*;
    use crate::Config;

    const FULL: &str = include_str!("../../../conf/mayfly.full.toml");

    /// The reference file with its commented-out keys and tables switched on: a line `# key = ...`
    /// or `# [table]` is a documented key; prose never starts that way.
    fn switched_on(text: &str) -> String {
        let mut out = String::new();
        for line in text.lines() {
            let rest = line.strip_prefix("# ").unwrap_or("");
            let ident = rest
                .bytes()
                .take_while(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_')
                .count();
            let is_key = rest.starts_with(|c: char| c.is_ascii_lowercase())
                && rest[ident..].trim_start().starts_with('=');
            let inner = rest.trim_start_matches('[').trim_end_matches(']');
            let is_table = rest.starts_with('[')
                && rest.ends_with(']')
                && !inner.is_empty()
                && inner
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '_' || c == '.');
            out.push_str(if is_key || is_table { rest } else { line });
            out.push('\n');
        }
        out
    }

    /// The keys a parsed file mentions, descending only into tables the config defines (not
    /// into free-form maps such as `attributes` or an inline JWK Set).
    fn mentioned(
        table: &toml::Table,
        path: &str,
        kinds: &BTreeMap<String, Kind>,
        out: &mut BTreeSet<String>,
    ) {
        for (k, v) in table {
            let p = join(path, k);
            out.insert(p.clone());
            match (kinds.get(&p), v) {
                (Some(Kind::Table), toml::Value::Table(t)) => mentioned(t, &p, kinds, out),
                (Some(Kind::Tables), toml::Value::Array(items)) => {
                    for item in items {
                        if let toml::Value::Table(t) = item {
                            mentioned(t, &p, kinds, out);
                        }
                    }
                }
                _ => {}
            }
        }
    }

    #[test]
    fn the_walk_finds_nested_tables_and_lists() {
        let kinds = accepted().unwrap();
        assert_eq!(kinds.get("listen"), Some(&Kind::Value));
        assert_eq!(kinds.get("pool"), Some(&Kind::Table));
        assert_eq!(kinds.get("clients"), Some(&Kind::Tables));
        assert_eq!(kinds.get("proxy.routes"), Some(&Kind::Tables));
        assert_eq!(kinds.get("proxy.routes.inject"), Some(&Kind::Table));
        assert_eq!(kinds.get("proxy.routes.inject.basic"), Some(&Kind::Value));
        assert_eq!(kinds.get("issuers.algorithms"), Some(&Kind::Value));
        assert_eq!(kinds.get("issuers.attributes"), Some(&Kind::Value));
        assert_eq!(
            kinds.get("node_attestation.required_claims"),
            Some(&Kind::Value)
        );
        assert_eq!(kinds.get("audit.output"), Some(&Kind::Value));
        assert!(!kinds.contains_key("issuers.attributes.namespace"));
    }

    #[test]
    fn the_reference_file_is_a_valid_config() {
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../conf");
        let c = Config::from_toml_str(FULL, "conf/mayfly.full.toml", &base, &[]).unwrap();
        // Its active values are the defaults.
        let d = Config::from_toml_str("", "empty", &base, &[]).unwrap();
        assert_eq!(c.tokens.default_ttl, d.tokens.default_ttl);
        assert_eq!(c.tokens.max_ttl, d.tokens.max_ttl);
        assert_eq!(c.tokens.key_rotation, d.tokens.key_rotation);
        assert_eq!(c.proxy.listen, d.proxy.listen);
        assert_eq!(c.proxy.revocation_cache, d.proxy.revocation_cache);
        assert_eq!(c.proxy.upstream_timeout, d.proxy.upstream_timeout);
        assert_eq!(c.proxy.reload_interval, d.proxy.reload_interval);
        assert_eq!(c.spiffe.x509_svid_ttl, d.spiffe.x509_svid_ttl);
    }

    #[test]
    fn the_reference_file_documents_every_key_and_no_other() {
        let kinds = accepted().unwrap();
        let all = switched_on(FULL);
        let table: toml::Table = all
            .parse()
            .unwrap_or_else(|e| panic!("conf/mayfly.full.toml with its examples switched on: {e}"));
        // Every example has the type its key takes.
        let _: RawConfig = table.clone().try_into().unwrap_or_else(|e| {
            panic!("an example in conf/mayfly.full.toml does not fit its key: {e}")
        });
        let mut documented = BTreeSet::new();
        mentioned(&table, "", &kinds, &mut documented);
        let accepted: BTreeSet<String> = kinds.keys().cloned().collect();
        let missing: Vec<_> = accepted.difference(&documented).collect();
        let unknown: Vec<_> = documented.difference(&accepted).collect();
        assert!(
            missing.is_empty(),
            "conf/mayfly.full.toml does not document {missing:?}: add each as `# key = default  # what it does`"
        );
        assert!(
            unknown.is_empty(),
            "conf/mayfly.full.toml documents keys the config refuses: {unknown:?}"
        );
    }

    #[test]
    fn every_key_outside_arrays_of_tables_has_an_environment_override() {
        let kinds = accepted().unwrap();
        // Keys reachable through tables only; an array of tables is overridden whole.
        let expected: BTreeSet<String> = kinds
            .iter()
            .filter(|(path, kind)| {
                let mut ancestors = path.match_indices('.').map(|(i, _)| &path[..i]);
                **kind != Kind::Table && ancestors.all(|a| kinds.get(a) == Some(&Kind::Table))
            })
            .map(|(p, _)| p.clone())
            .collect();
        let overridable: BTreeSet<String> = crate::env::KEYS
            .iter()
            .chain(crate::env::PROXY_KEYS)
            .map(|(_, table, key)| table.map_or_else(|| key.to_string(), |t| format!("{t}.{key}")))
            .collect();
        assert_eq!(expected, overridable);
    }

    #[test]
    fn switching_on_leaves_prose_alone() {
        let text = "# Prose, with a = sign.\n#   indented = example\n# key = 1\n# [[tables]]\n# [not a table\n";
        assert_eq!(
            switched_on(text),
            "# Prose, with a = sign.\n#   indented = example\nkey = 1\n[[tables]]\n# [not a table\n"
        );
    }
}
