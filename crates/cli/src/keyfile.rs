//! Key files: client key pairs from `keygen`, and the master key.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use mayfly_crypto::{Kek, KeyAlg, SigningKey};

/// Write `data` to a new file with `mode`, refusing to overwrite.
pub fn write_new(path: &Path, data: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))?;
    f.write_all(data)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.sync_all()
        .with_context(|| format!("cannot sync {}", path.display()))?;
    Ok(())
}

/// `mayfly keygen`.
pub fn keygen(alg: &str, kid: Option<&str>, out: &Path) -> anyhow::Result<ExitCode> {
    let Some(alg) = KeyAlg::from_name(alg) else {
        bail!("--alg {alg} is not supported: use ES256 (default), ES384 or EdDSA");
    };
    let key = SigningKey::generate(alg, kid)?;
    let private = PathBuf::from(format!("{}.private.jwk.json", out.display()));
    let public = PathBuf::from(format!("{}.jwks.json", out.display()));
    let jwks = serde_json::to_string_pretty(&serde_json::json!({ "keys": [key.public_jwk()] }))?;
    write_new(&private, key.to_private_jwk()?.as_bytes(), 0o600)?;
    write_new(&public, jwks.as_bytes(), 0o644)?;
    eprintln!(
        "wrote {} (private, 0600: keep it with the workload)",
        private.display()
    );
    eprintln!(
        "wrote {} (public: register it with `jwks_file = ...` or `mayfly client add`)",
        public.display()
    );
    println!("{}", key.kid());
    Ok(ExitCode::SUCCESS)
}

/// Load a private JWK file, warning when others can read it.
pub fn load_private_jwk(path: &Path) -> anyhow::Result<SigningKey> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        eprintln!(
            "mayfly: warning: {} is readable by other users; chmod 600 it",
            path.display()
        );
    }
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?,
    );
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    SigningKey::from_private_jwk(&value)
        .with_context(|| format!("{} is not a usable private JWK", path.display()))
}

/// The master key: `MAYFLY_MASTER_KEY`, else the file named by `MAYFLY_MASTER_KEY_FILE`, else
/// `DATA_DIR/master.key` (created, 0600, with a warning, when `create` is set).
pub fn master_key(data_dir: &Path, create: bool) -> anyhow::Result<Kek> {
    if let Ok(v) = std::env::var("MAYFLY_MASTER_KEY") {
        return Kek::from_base64(&v).context(
            "MAYFLY_MASTER_KEY must be 32 random bytes in base64 (e.g. `openssl rand -base64 32`)",
        );
    }
    let (path, explicit) = match std::env::var_os("MAYFLY_MASTER_KEY_FILE") {
        Some(p) => (PathBuf::from(p), true),
        None => (data_dir.join("master.key"), false),
    };
    if !path.exists() {
        if explicit || !create {
            bail!(
                "no master key: {} does not exist; set MAYFLY_MASTER_KEY or MAYFLY_MASTER_KEY_FILE",
                path.display()
            );
        }
        let key = Kek::generate_base64()?;
        write_new(&path, key.as_bytes(), 0o600)?;
        tracing::warn!(path = %path.display(), "created a master key file beside the data; in production keep it apart (MAYFLY_MASTER_KEY_FILE on another volume, or a secret manager)");
    }
    let meta =
        std::fs::metadata(&path).with_context(|| format!("cannot read {}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        bail!(
            "{} is readable by other users; run `chmod 600 {}`",
            path.display(),
            path.display()
        );
    }
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?,
    );
    Kek::from_base64(&text)
        .with_context(|| format!("{} must hold 32 random bytes in base64", path.display()))
}

/// Create the data directory with mode 0700, or check an existing one is not open to others.
pub fn data_dir(path: &Path) -> anyhow::Result<()> {
    if !path.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .with_context(|| format!("cannot create data directory {}", path.display()))?;
    } else if std::fs::metadata(path)?.permissions().mode() & 0o077 != 0 {
        tracing::warn!(path = %path.display(), "data directory is accessible to other users; chmod 700 it");
    }
    Ok(())
}
