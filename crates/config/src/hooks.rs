//! `[webhooks]` (the CI platforms' job-end notices) and `[admin]` (the operator endpoints).
//! Webhook secrets are read from files (never written inline, so they never sit in a config
//! file that is shared or logged) or from `MAYFLY_WEBHOOK_GITHUB_SECRET` /
//! `MAYFLY_WEBHOOK_GITLAB_SECRET`; they are held in [`SecretString`]s.

use std::path::Path;

use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::ConfigError;
use crate::raw::resolve;

/// The environment variable that holds the GitHub webhook secret itself.
pub const GITHUB_SECRET_ENV: &str = "MAYFLY_WEBHOOK_GITHUB_SECRET";
/// The environment variable that holds the GitLab webhook secret token itself.
pub const GITLAB_SECRET_ENV: &str = "MAYFLY_WEBHOOK_GITLAB_SECRET";

/// The shortest secret accepted: a guessable secret would let anyone end CI leases.
const MIN_SECRET_LEN: usize = 16;

/// `[webhooks]`: the secrets the CI platforms sign (or send) with their deliveries. An endpoint
/// whose secret is unset answers 404: webhooks are off by default.
#[derive(Debug, Clone, Default)]
pub struct WebhooksConfig {
    /// GitHub's webhook secret (`X-Hub-Signature-256` is HMAC-SHA256 under it).
    pub github_secret: Option<SecretString>,
    /// GitLab's secret token (sent as `X-Gitlab-Token`).
    pub gitlab_secret: Option<SecretString>,
    /// GitLab's signing token (`whsec_` + base64 of the HMAC key; `webhook-signature`).
    pub gitlab_signing_token: Option<SecretString>,
}

/// `[admin]`: who may call the operator endpoints.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// The audience an operator's access token must carry (default `<issuer>/admin`).
    pub audience: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWebhooks {
    github_secret_file: Option<String>,
    gitlab_secret_file: Option<String>,
    gitlab_signing_token_file: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    audience: Option<String>,
}

impl RawAdmin {
    pub(crate) fn validate(self, src: &str) -> Result<AdminConfig, ConfigError> {
        if self
            .audience
            .as_deref()
            .is_some_and(|a| a.is_empty() || a.chars().any(char::is_whitespace))
        {
            return Err(ConfigError::new(
                src,
                "admin.audience",
                "is empty or holds whitespace",
                "leave it out for \"<issuer>/admin\", or write one URI",
            ));
        }
        Ok(AdminConfig {
            audience: self.audience,
        })
    }
}

impl RawWebhooks {
    pub(crate) fn validate(
        self,
        src: &str,
        base: &Path,
        env: &[(String, String)],
    ) -> Result<WebhooksConfig, ConfigError> {
        let from_env = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let github_secret = match from_env(GITHUB_SECRET_ENV) {
            Some(v) => Some(env_secret(GITHUB_SECRET_ENV, v)?),
            None => self
                .github_secret_file
                .map(|f| secret_file(src, "webhooks.github_secret_file", base, &f))
                .transpose()?,
        };
        let gitlab_secret = match from_env(GITLAB_SECRET_ENV) {
            Some(v) => Some(env_secret(GITLAB_SECRET_ENV, v)?),
            None => self
                .gitlab_secret_file
                .map(|f| secret_file(src, "webhooks.gitlab_secret_file", base, &f))
                .transpose()?,
        };
        let key = "webhooks.gitlab_signing_token_file";
        let gitlab_signing_token = self
            .gitlab_signing_token_file
            .map(|f| secret_file(src, key, base, &f))
            .transpose()?;
        let usable = |t: &SecretString| {
            t.expose_secret()
                .strip_prefix("whsec_")
                .and_then(|k| base64::engine::general_purpose::STANDARD.decode(k).ok())
                .is_some_and(|k| k.len() >= MIN_SECRET_LEN)
        };
        if gitlab_signing_token.as_ref().is_some_and(|t| !usable(t)) {
            return Err(ConfigError::new(
                src,
                key,
                "the signing token is not `whsec_` followed by a base64 key",
                "copy the signing token GitLab shows for the webhook (whsec_ followed by base64)",
            ));
        }
        Ok(WebhooksConfig {
            github_secret,
            gitlab_secret,
            gitlab_signing_token,
        })
    }
}

fn env_secret(name: &str, value: String) -> Result<SecretString, ConfigError> {
    let value = SecretString::from(value);
    if value.expose_secret().trim().len() < MIN_SECRET_LEN {
        return Err(ConfigError::new(
            &format!("environment variable {name}"),
            name,
            format!("the secret is shorter than {MIN_SECRET_LEN} characters"),
            "use a random secret, e.g. `openssl rand -hex 32`, in the platform and here",
        ));
    }
    Ok(SecretString::from(value.expose_secret().trim().to_string()))
}

/// A secret read from a file that only its owner may read; surrounding whitespace (the newline
/// `echo` adds) is not part of it.
fn secret_file(src: &str, key: &str, base: &Path, file: &str) -> Result<SecretString, ConfigError> {
    let path = resolve(base, file);
    let meta = std::fs::metadata(&path).map_err(|e| {
        ConfigError::new(
            src,
            key,
            format!("cannot read `{}`: {e}", path.display()),
            "create the file holding the secret (mode 0600), or correct the path",
        )
    })?;
    check_private(src, key, &path, &meta)?;
    let text = std::fs::read_to_string(&path).map_err(|e| {
        ConfigError::new(
            src,
            key,
            format!("cannot read `{}`: {e}", path.display()),
            "the file must hold the secret as text",
        )
    })?;
    let text = SecretString::from(text);
    let secret = text.expose_secret().trim();
    if secret.len() < MIN_SECRET_LEN {
        return Err(ConfigError::new(
            src,
            key,
            format!(
                "the secret in `{}` is shorter than {MIN_SECRET_LEN} characters",
                path.display()
            ),
            "use a random secret, e.g. `openssl rand -hex 32`, in the platform and here",
        ));
    }
    Ok(SecretString::from(secret.to_string()))
}

#[cfg(unix)]
fn check_private(
    src: &str,
    key: &str,
    path: &Path,
    meta: &std::fs::Metadata,
) -> Result<(), ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(ConfigError::new(
            src,
            key,
            format!("`{}` is readable by other users", path.display()),
            format!("run `chmod 600 {}`", path.display()),
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(
    _src: &str,
    _key: &str,
    _path: &Path,
    _meta: &std::fs::Metadata,
) -> Result<(), ConfigError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use secrecy::ExposeSecret;

    use crate::Config;

    fn write(dir: &Path, name: &str, text: &str, mode: u32) {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    use std::path::Path;

    #[test]
    fn secrets_come_from_private_files_or_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "gh.secret", "0123456789abcdef0123\n", 0o600);
        write(dir.path(), "gl.secret", "gitlab-secret-token-1\n", 0o600);
        write(
            dir.path(),
            "gl.whsec",
            "whsec_BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\n",
            0o600,
        );
        let text = "[webhooks]\ngithub_secret_file = \"gh.secret\"\ngitlab_secret_file = \"gl.secret\"\ngitlab_signing_token_file = \"gl.whsec\"\n";
        let c = Config::from_toml_str(text, "t.toml", dir.path(), &[]).unwrap();
        assert_eq!(
            c.webhooks.github_secret.unwrap().expose_secret(),
            "0123456789abcdef0123"
        );
        assert_eq!(
            c.webhooks.gitlab_secret.unwrap().expose_secret(),
            "gitlab-secret-token-1"
        );
        assert_eq!(
            c.webhooks.gitlab_signing_token.unwrap().expose_secret(),
            "whsec_BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc="
        );
        // The environment wins over the file.
        let env = [(
            super::GITHUB_SECRET_ENV.to_string(),
            "from-the-environment-1".to_string(),
        )];
        let c = Config::from_toml_str(text, "t.toml", dir.path(), &env).unwrap();
        assert_eq!(
            c.webhooks.github_secret.unwrap().expose_secret(),
            "from-the-environment-1"
        );
        // Off by default.
        let c = Config::from_toml_str("", "t.toml", dir.path(), &[]).unwrap();
        assert!(c.webhooks.github_secret.is_none() && c.webhooks.gitlab_secret.is_none());
        assert!(c.admin.audience.is_none());
    }

    #[test]
    fn open_short_or_foreign_secrets_are_refused_without_showing_them() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "open.secret", "0123456789abcdef0123", 0o644);
        write(dir.path(), "short.secret", "abc", 0o600);
        write(dir.path(), "plain.secret", "0123456789abcdef0123", 0o600);
        for (text, key, problem) in [
            (
                "[webhooks]\ngithub_secret_file = \"open.secret\"",
                "webhooks.github_secret_file",
                "readable by other users",
            ),
            (
                "[webhooks]\ngitlab_secret_file = \"short.secret\"",
                "webhooks.gitlab_secret_file",
                "shorter than 16",
            ),
            (
                "[webhooks]\ngitlab_signing_token_file = \"plain.secret\"",
                "webhooks.gitlab_signing_token_file",
                "whsec_",
            ),
            (
                "[webhooks]\ngithub_secret_file = \"missing.secret\"",
                "webhooks.github_secret_file",
                "cannot read",
            ),
            ("[admin]\naudience = \"\"", "admin.audience", "empty"),
        ] {
            let e = Config::from_toml_str(text, "t.toml", dir.path(), &[]).unwrap_err();
            assert_eq!(e.key, key, "{text}");
            assert!(e.problem.contains(problem), "{text}: {e}");
            assert!(!e.to_string().contains("0123456789abcdef"), "{e}");
        }
        let env = [(super::GITLAB_SECRET_ENV.to_string(), "short".to_string())];
        let e = Config::from_toml_str("", "t.toml", dir.path(), &env).unwrap_err();
        assert_eq!(e.key, super::GITLAB_SECRET_ENV);
    }
}
