//! What registry authentication reads from others: a Docker `config.json` (for a registry host the
//! first byte picks), a registry's `WWW-Authenticate` challenges, and a token server's answer. No
//! input may panic; credentials found are for the host asked about; no string value of the file
//! reaches an error message or the credentials' Debug output (it may be a secret); challenges come
//! out lowercase; a token's lifetime is one the token cache can add to the clock.

#![no_main]

use std::collections::BTreeSet;
use std::time::Instant;

use berth::engine::image::auth::{Credentials, fuzzing, parse_challenges, same_registry_host};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const HOSTS: &[&str] = &["docker.io", "registry-1.docker.io", "localhost:5000", "quay.io"];

/// The keys and the string values of a JSON document.
fn strings(v: &Value, keys: &mut BTreeSet<String>, values: &mut BTreeSet<String>) {
    match v {
        Value::String(s) => {
            values.insert(s.clone());
        }
        Value::Array(a) => a.iter().for_each(|x| strings(x, keys, values)),
        Value::Object(o) => {
            for (k, x) in o {
                keys.insert(k.clone());
                strings(x, keys, values);
            }
        }
        _ => {}
    }
}

fn docker_config(text: &[u8], host: &str) {
    let found = Credentials::from_docker_config_bytes(text, host);
    let mut keys = BTreeSet::new();
    let mut values = BTreeSet::new();
    if let Ok(doc) = serde_json::from_slice::<Value>(text) {
        strings(&doc, &mut keys, &mut values);
    }
    // Keys are registry names, which messages may show; a value may be a password. The file's own
    // quoting is looked for, so that a value that is also a word of the message does not count.
    let secrets: Vec<String> =
        values.iter().filter(|v| v.len() >= 2 && !keys.contains(*v)).map(|v| format!("{v:?}")).collect();
    match found {
        Ok(Some(c)) => {
            assert!(same_registry_host(&c.server_address, host), "{:?} for {host}", c.server_address);
            let debug = format!("{c:?}");
            let secrets = [
                (&c.password, "password"),
                (&c.identity_token, "identity_token"),
                (&c.registry_token, "registry_token"),
            ];
            for (secret, name) in secrets {
                if !secret.is_empty() {
                    assert!(debug.contains(&format!("{name}: \"<redacted>\"")), "{debug}");
                }
            }
        }
        Ok(None) => {}
        Err(e) => {
            let msg = e.to_string();
            for s in &secrets {
                assert!(!msg.contains(s.as_str()), "the error {msg:?} shows the value {s}");
            }
        }
    }
}

fn challenges(header: &str) {
    let parsed = parse_challenges(header);
    assert!(parsed.len() <= header.len());
    for c in &parsed {
        assert!(!c.scheme.is_empty());
        assert_eq!(c.scheme, c.scheme.to_ascii_lowercase());
        for name in c.params.keys() {
            assert!(!name.is_empty());
            assert_eq!(*name, name.to_ascii_lowercase());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode & 3 {
        0 | 1 => docker_config(rest, HOSTS[usize::from(mode >> 2) % HOSTS.len()]),
        2 => challenges(&String::from_utf8_lossy(rest)),
        _ => {
            if let Some((token, lifetime)) = fuzzing::token_response(rest) {
                assert!(!token.is_empty());
                // What the token cache does with it.
                let _expiry = Instant::now() + lifetime;
            }
        }
    }
});
