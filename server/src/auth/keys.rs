//! API keys: random, shown once, stored only as their SHA-256.

use sha2::{Digest, Sha256};

use super::{Grant, Permission};

/// Random bytes in a key: 256 bits, beyond guessing.
const KEY_BYTES: usize = 32;

/// The digest a key is stored and looked up by.
pub fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// A new key and the auth-file entry that grants it, for
/// `vowd keys new`; the key itself is printed once and stored nowhere.
pub fn new_key(
    name: &str,
    namespace: &str,
    permissions: &[Permission],
) -> Result<(String, String), String> {
    Grant::new(name, namespace, permissions.iter().copied())?;
    let key = format!("vow_{}", hex::encode(rand::random::<[u8; KEY_BYTES]>()));
    let permissions: Vec<String> = permissions
        .iter()
        .map(|permission| format!("{:?}", permission.as_str()))
        .collect();
    let entry = format!(
        "[[api_keys]]\nname = {name:?}\nnamespace = {namespace:?}\npermissions = [{}]\nsha256 = \"{}\"\n",
        permissions.join(", "),
        hex::encode(digest(&key))
    );
    Ok((key, entry))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::auth::{AccessConfig, authenticate};

    #[test]
    fn a_new_key_is_granted_by_its_printed_entry_only() {
        let (key, entry) = new_key("ci", "team-a", &[Permission::Submit]).unwrap();
        let config = AccessConfig::parse(&entry, Path::new(".")).expect("a valid entry");
        let grant = authenticate(&config, Some(&key), &[]).expect("the key");
        assert_eq!(grant.name, "ci");
        assert!(authenticate(&config, Some("vow_guess"), &[]).is_err());
        assert!(!entry.contains(&key), "the entry holds only the digest");
    }
}
