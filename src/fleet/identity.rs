//! This board's fleet identity: the Ed25519 key pair kept in the state directory's key file.

use std::path::Path;

use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};

use crate::state::files::{write_atomic_with, FLEET_KEY};

/// This board's signing key.
pub struct Identity {
    pub(super) pair: Ed25519KeyPair,
}

impl Identity {
    /// Loads `dir/fleet.key`, creating it (mode 0600) on first start.
    pub fn load_or_create(dir: &Path) -> std::io::Result<Identity> {
        let path = dir.join(FLEET_KEY);
        let other = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        match std::fs::read(&path) {
            Ok(pkcs8) => Ed25519KeyPair::from_pkcs8(&pkcs8)
                .map(|pair| Identity { pair })
                .map_err(|e| {
                    other(format!(
                        "{}: not an Ed25519 PKCS#8 key: {e}",
                        path.display()
                    ))
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir)?;
                let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
                    .map_err(|_| other("cannot generate a key".into()))?;
                // Private from its creation: a power cut leaves no half-written key.
                write_atomic_with(&path, Some(0o600), |w| w.write_all(pkcs8.as_ref()))?;
                let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
                    .map_err(|e| other(format!("generated key unreadable: {e}")))?;
                tracing::info!(path = %path.display(), "generated this board's fleet key");
                Ok(Identity { pair })
            }
            Err(e) => Err(e),
        }
    }

    /// A key pair from a fixed seed. For tests and fuzzing only: a board's key comes from
    /// [`Identity::load_or_create`].
    pub fn from_seed(seed: &[u8; 32]) -> Result<Identity, String> {
        Ed25519KeyPair::from_seed_unchecked(seed)
            .map(|pair| Identity { pair })
            .map_err(|e| format!("bad Ed25519 seed: {e}"))
    }

    /// The public key, hex.
    pub fn public_hex(&self) -> String {
        hex::encode(self.pair.public_key().as_ref())
    }

    /// The public key.
    pub fn public_key(&self) -> [u8; 32] {
        let mut k = [0u8; 32];
        k.copy_from_slice(self.pair.public_key().as_ref());
        k
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_created_once_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let a = Identity::load_or_create(dir.path()).unwrap();
        let b = Identity::load_or_create(dir.path()).unwrap();
        assert_eq!(a.public_hex(), b.public_hex());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(FLEET_KEY))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "key readable by others: {mode:o}");
        }
        std::fs::write(dir.path().join(FLEET_KEY), b"junk").unwrap();
        assert!(Identity::load_or_create(dir.path()).is_err());
    }
}
